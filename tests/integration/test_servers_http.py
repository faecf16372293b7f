"""The ServerRegistry over real HTTP (docs/protocol/servers.md): register, heartbeat, delete and
the signed list; expiry on the server's clock; authentication; the endpoint filter; bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration.test_http import assert_common_headers, assert_json_error
from zajel import bootstrap, cli, crypto
from zajel.clock import epoch_ms

SEED = bytes(range(32))
PUBLIC_KEY = crypto.public_key_b64(crypto.signing_key(SEED))
SECRET = "registry-secret-for-tests"
AUTH = {"Authorization": f"Bearer {SECRET}"}
ENTRY_FIELDS = [
    "serverId",
    "endpoint",
    "publicKey",
    "region",
    "connections",
    "relayConnections",
    "signalingConnections",
    "activeCodes",
    "registeredAt",
    "lastSeen",
]
PRIVATE = "Invalid endpoint: must not point to private or internal addresses"


def registry_config(**overrides: Any):
    values: dict[str, Any] = {
        "bootstrap_signing_key": SEED.hex(),
        "attestation_signing_key": bytes(range(64, 96)).hex(),
        "http_rate_per_minute": 100_000,
        "ws_idle_timeout": 86_400.0,
    }
    values.update(overrides)
    return make_config(**values)


@pytest.fixture
async def registry(nursery):
    running = await start_server(nursery, registry_config())
    yield running.url
    running.stop.set()


def server_body(server_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "serverId": server_id,
        "endpoint": f"wss://{server_id}.relay.example.com/ws",
        "publicKey": f"pk-{server_id}",
        **fields,
    }


async def delete(url: str, server_id_path: str, **kwargs: Any) -> _http.HttpResponse:
    return await _http.request(url, "DELETE", f"/servers/{server_id_path}", **kwargs)


async def signed_list(url: str, now_ms: int | None = None) -> list[dict[str, Any]]:
    response = await _http.get(url, "/servers")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    return bootstrap.verify_server_list(
        response.body,
        response.headers["x-bootstrap-signature"],
        PUBLIC_KEY,
        now_ms=epoch_ms() if now_ms is None else now_ms,
    )


async def test_register_heartbeat_list_and_delete(registry):
    with trio.fail_after(10):
        before = epoch_ms()
        response = await _http.post(
            registry,
            "/servers",
            server_body("vps-1", region="eu-west", connections=12.7, activeCodes=-3),
        )
        assert response.status == 200
        assert_common_headers(response)
        body = response.json()
        assert body["success"] is True
        entry = body["server"]
        assert list(entry) == ENTRY_FIELDS
        assert entry["serverId"] == "vps-1"
        assert entry["region"] == "eu-west"
        assert (entry["connections"], entry["activeCodes"], entry["relayConnections"]) == (12, 0, 0)
        assert before <= entry["registeredAt"] == entry["lastSeen"] <= epoch_ms()

        await _http.post(registry, "/servers", server_body("vps-2", region="bad region!"))
        servers = await signed_list(registry)
        assert [server["serverId"] for server in servers] == ["vps-1", "vps-2"]
        assert servers[1]["region"] == "unknown"

        beat = await _http.post(
            registry, "/servers/heartbeat", {"serverId": "vps-1", "relayConnections": 4}
        )
        assert beat.status == 200
        assert beat.json()["success"] is True
        assert [peer["serverId"] for peer in beat.json()["peers"]] == ["vps-2"]
        assert (await signed_list(registry))[0]["relayConnections"] == 4

        gone = await delete(registry, "vps-2")
        assert (gone.status, gone.json()) == (200, {"success": True})
        assert (await delete(registry, "never-registered")).json() == {"success": True}
        assert [server["serverId"] for server in await signed_list(registry)] == ["vps-1"]
        stats = (await _http.get(registry, "/stats")).json()
        assert stats["servers"] == {"totalServers": 1, "liveServers": 1}


async def test_the_signature_covers_every_byte_of_the_body(registry):
    with trio.fail_after(10):
        await _http.post(registry, "/servers", server_body("vps-1"))
        response = await _http.get(registry, "/servers")
    signature = response.headers["x-bootstrap-signature"]
    assert len(signature) == 88
    assert crypto.verify_b64(crypto.parse_public_key(PUBLIC_KEY), response.body, signature)
    for index in range(len(response.body)):
        changed = bytearray(response.body)
        changed[index] ^= 0x01
        with pytest.raises(bootstrap.BadSignature):
            bootstrap.verify_server_list(bytes(changed), signature, PUBLIC_KEY, now_ms=epoch_ms())
    other_key = crypto.public_key_b64(crypto.signing_key(bytes(32)))
    with pytest.raises(bootstrap.BadSignature):
        bootstrap.verify_server_list(response.body, signature, other_key, now_ms=epoch_ms())


async def test_non_ascii_fields_are_listed_as_ascii_escapes(registry):
    # The signed list's body stays ASCII (docs/protocol/servers.md, "The signed list"), while
    # WebSocket frames go out as raw UTF-8.
    body = server_body("vps-u", publicKey="clé-\U0001f600")
    with trio.fail_after(10):
        registered = await _http.post(registry, "/servers", body)
        assert registered.status == 200
        response = await _http.get(registry, "/servers")
        assert response.status == 200
        assert response.body.isascii()
        assert b"\\u00e9" in response.body
        entries = await signed_list(registry)
    assert entries[0]["publicKey"] == "clé-\U0001f600"


async def test_an_old_list_is_refused_by_the_client(registry):
    with trio.fail_after(10):
        response = await _http.get(registry, "/servers")
    timestamp = json.loads(response.body)["timestamp"]
    signature = response.headers["x-bootstrap-signature"]
    assert (
        bootstrap.verify_server_list(response.body, signature, PUBLIC_KEY, now_ms=timestamp) == []
    )
    with pytest.raises(bootstrap.StaleList):
        bootstrap.verify_server_list(
            response.body, signature, PUBLIC_KEY, now_ms=timestamp + 300_001
        )
    with pytest.raises(bootstrap.FutureList):
        bootstrap.verify_server_list(
            response.body, signature, PUBLIC_KEY, now_ms=timestamp - 61_000
        )


async def test_listed_at_4_minutes_and_gone_at_6_on_the_servers_clock(registry, clock):
    with trio.fail_after(10 + 6 * 60):  # the jumps advance this deadline's clock too
        await _http.post(registry, "/servers", server_body("vps-1"))
        start = epoch_ms()
        clock.jump(4 * 60)
        assert [s["serverId"] for s in await signed_list(registry, start + 240_000)] == ["vps-1"]
        clock.jump(2 * 60)
        assert await signed_list(registry, start + 360_000) == []
        beat = await _http.post(registry, "/servers/heartbeat", {"serverId": "vps-1"})
        assert_json_error(beat, 404, "Server not registered")
        stats = (await _http.get(registry, "/stats")).json()
        assert stats["servers"] == {"totalServers": 0, "liveServers": 0}  # swept at 5 min


async def test_heartbeats_keep_a_server_listed(registry, clock):
    with trio.fail_after(10 + 10 * 60):  # the jumps advance this deadline's clock too
        await _http.post(registry, "/servers", server_body("vps-1"))
        start = epoch_ms()
        for minute in range(1, 11):
            clock.jump(60)
            beat = await _http.post(registry, "/servers/heartbeat", {"serverId": "vps-1"})
            assert beat.status == 200, minute
        listed = await signed_list(registry, start + 600_000)
        assert [server["serverId"] for server in listed] == ["vps-1"]


async def test_the_list_is_public_and_exposes_its_signature_header(registry):
    with trio.fail_after(10):
        response = await _http.get(registry, "/servers", headers={"Origin": "https://app.example"})
    assert response.status == 200
    assert response.headers["access-control-expose-headers"] == "X-Bootstrap-Signature"
    assert json.loads(response.body)["servers"] == []


# -- authentication ----------------------------------------------------------------------------

WRITES = [
    ("POST", "/servers", server_body("vps-1")),
    ("POST", "/servers/heartbeat", {"serverId": "vps-1"}),
    ("DELETE", "/servers/vps-1", None),
]


async def write(url: str, method: str, path: str, payload: Any, headers: dict[str, str]):
    body = None if payload is None else json.dumps(payload).encode()
    return await _http.request(url, method, path, headers=headers, body=body)


@pytest.mark.parametrize("env", ["development", "production"])
async def test_with_the_secret_set_every_write_needs_the_bearer(nursery, env):
    running = await start_server(nursery, registry_config(env=env, server_registry_secret=SECRET))
    wrong = [
        {},
        {"Authorization": "Bearer wrong-secret"},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": SECRET},
        {"Authorization": "Bearer"},
    ]
    with trio.fail_after(20):
        for method, path, payload in WRITES:
            for headers in wrong:
                response = await write(running.url, method, path, payload, headers)
                assert_json_error(response, 401, "Unauthorized")
        # Nothing was registered or deleted by the refused requests; the right bearer works.
        for method, path, payload in WRITES:
            response = await write(running.url, method, path, payload, AUTH)
            assert response.status == 200, (method, path, response.body)
        assert (await _http.get(running.url, "/servers")).status == 200


@pytest.mark.parametrize("env", ["production", "qa"])
async def test_without_the_secret_outside_development_writes_are_503(nursery, env):
    running = await start_server(nursery, registry_config(env=env))
    with trio.fail_after(10):
        for method, path, payload in WRITES:
            response = await write(running.url, method, path, payload, AUTH)
            assert_json_error(response, 503, "Server registry authentication not configured")
        assert (await _http.get(running.url, "/servers")).status == 200


async def test_development_without_the_secret_is_open(registry):
    with trio.fail_after(10):
        for method, path, payload in WRITES:
            response = await write(registry, method, path, payload, {})
            assert response.status == 200, (method, path, response.body)


# -- the endpoint filter -------------------------------------------------------------------------


@pytest.fixture
async def production(nursery):
    running = await start_server(
        nursery, registry_config(env="production", server_registry_secret=SECRET)
    )
    yield running.url
    running.stop.set()


REFUSED_HOSTS = [
    "127.0.0.2",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.1.1",
    "100.64.0.1",
    "0.0.0.0",
    "[::1]",
    "[fd00::1]",
    "[fe80::1]",
    "[::ffff:127.0.0.1]",
    "localhost",
]


async def test_private_endpoints_are_refused_in_production(production):
    with trio.fail_after(20):
        for host in REFUSED_HOSTS:
            for scheme in ("https", "wss"):
                body = server_body("vps-1", endpoint=f"{scheme}://{host}:8443/ws")
                response = await _http.post(production, "/servers", body, headers=AUTH)
                assert_json_error(response, 400, PRIVATE)
        public = await _http.post(
            production,
            "/servers",
            server_body("vps-1", endpoint="wss://relay.example.com"),
            headers=AUTH,
        )
        assert public.status == 200
        assert public.json()["server"]["endpoint"] == "wss://relay.example.com"
        plain = await _http.post(
            production,
            "/servers",
            server_body("vps-2", endpoint="http://relay.example.com"),
            headers=AUTH,
        )
        assert_json_error(plain, 400, "Invalid endpoint: must use HTTPS or WSS protocol")


async def test_development_allows_private_hosts_and_plain_schemes(registry):
    with trio.fail_after(20):
        for index, host in enumerate(REFUSED_HOSTS):
            body = server_body(f"vps-{index}", endpoint=f"http://{host}:8080")
            response = await _http.post(registry, "/servers", body)
            assert response.status == 200, (host, response.body)


# -- bad input -------------------------------------------------------------------------------------

MISSING = "Missing required fields: serverId, endpoint, publicKey"
BAD_INPUT: list[tuple[str, str, bytes | None, int, str]] = [
    ("POST", "/servers", b"", 400, "Request body is empty: expected a JSON object"),
    ("POST", "/servers", b"{", 400, "Invalid JSON body"),
    ("POST", "/servers", b"{'serverId': 1}", 400, "Invalid JSON body"),
    ("POST", "/servers", b'{"serverId": NaN}', 400, "Invalid JSON body"),
    ("POST", "/servers", b"\xff\xfe", 400, "Invalid JSON body"),
    ("POST", "/servers", b"[" * 2000 + b"]" * 2000, 400, "Invalid JSON body"),
    ("POST", "/servers", b"[]", 400, "Request body must be a JSON object"),
    ("POST", "/servers", b'"text"', 400, "Request body must be a JSON object"),
    ("POST", "/servers", b"null", 400, "Request body must be a JSON object"),
    ("POST", "/servers", b"{}", 400, MISSING),
    ("POST", "/servers", b'{"serverId":"a","endpoint":"wss://x.example.com"}', 400, MISSING),
    (
        "POST",
        "/servers",
        b'{"serverId":null,"endpoint":"wss://x.example.com","publicKey":"k"}',
        400,
        MISSING,
    ),
    (
        "POST",
        "/servers",
        b'{"serverId":5,"endpoint":"wss://x.example.com","publicKey":"k"}',
        400,
        "Invalid serverId format",
    ),
    (
        "POST",
        "/servers",
        b'{"serverId":"a b","endpoint":"wss://x.example.com","publicKey":"k"}',
        400,
        "Invalid serverId format",
    ),
    (
        "POST",
        "/servers",
        json.dumps(server_body("x" * 129)).encode(),
        400,
        "Invalid serverId format",
    ),
    (
        "POST",
        "/servers",
        b'{"serverId":"a","endpoint":["wss://x.example.com"],"publicKey":"k"}',
        400,
        "Invalid endpoint: must be a valid URL",
    ),
    (
        "POST",
        "/servers",
        b'{"serverId":"a","endpoint":"not a url","publicKey":"k"}',
        400,
        "Invalid endpoint: must be a valid URL",
    ),
    (
        "POST",
        "/servers",
        b'{"serverId":"a","endpoint":"wss://x.example.com","publicKey":{"k":1}}',
        400,
        "Invalid publicKey: must be a string",
    ),
    (
        "POST",
        "/servers",
        json.dumps(server_body("a", publicKey="k" * 1025)).encode(),
        400,
        "Invalid publicKey: too long",
    ),
    (
        "POST",
        "/servers",
        json.dumps(server_body("a", endpoint="wss://x.example.com/" + "p" * 2030)).encode(),
        400,
        "Invalid endpoint: URL too long (max 2048 characters)",
    ),
    (
        "POST",
        "/servers",
        json.dumps(server_body("a", publicKey="k" * 5000)).encode(),
        413,
        "Request body too large",
    ),
    ("POST", "/servers/heartbeat", b"", 400, "Request body is empty: expected a JSON object"),
    ("POST", "/servers/heartbeat", b"{oops", 400, "Invalid JSON body"),
    ("POST", "/servers/heartbeat", b"[1]", 400, "Request body must be a JSON object"),
    ("POST", "/servers/heartbeat", b"{}", 400, "Missing serverId"),
    ("POST", "/servers/heartbeat", b'{"serverId":""}', 400, "Missing serverId"),
    ("POST", "/servers/heartbeat", b'{"serverId":true}', 400, "Invalid serverId format"),
    ("POST", "/servers/heartbeat", b'{"serverId":"a#b"}', 400, "Invalid serverId format"),
    ("POST", "/servers/heartbeat", b'{"serverId":"ghost"}', 404, "Server not registered"),
    (
        "POST",
        "/servers/heartbeat",
        json.dumps({"serverId": "a", "pad": "x" * 1024}).encode(),
        413,
        "Request body too large",
    ),
    ("DELETE", "/servers/a%ZZ", None, 400, "Invalid server ID"),
    ("DELETE", "/servers/%", None, 400, "Invalid server ID"),
    ("DELETE", "/servers/%4", None, 400, "Invalid server ID"),
    ("DELETE", "/servers/%FF%FE", None, 400, "Invalid server ID"),
    ("DELETE", "/servers/%C3%A9", None, 400, "Invalid server ID"),
    ("DELETE", "/servers/a%20b", None, 400, "Invalid server ID"),
    ("DELETE", "/servers/a/b", None, 400, "Invalid server ID"),
    # An id that starts with a raw "/", or is empty: the route's own error, never a redirect.
    ("DELETE", "/servers//x", None, 400, "Invalid server ID"),
    ("DELETE", "/servers//vps-1", None, 400, "Invalid server ID"),
    ("DELETE", "/servers//", None, 400, "Invalid server ID"),
    ("DELETE", "/servers/", None, 400, "Invalid server ID"),
    ("DELETE", "/servers/%0d%0aforged", None, 400, "Invalid server ID"),
    ("DELETE", "/servers/" + "x" * 129, None, 400, "Invalid server ID"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD_INPUT)
async def test_bad_input_gets_a_4xx_json_error_and_never_a_500(
    registry, method, path, body, status, message
):
    with trio.fail_after(10):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = await _http.request(registry, method, path, headers=headers, body=body)
        assert_json_error(response, status, message)
        assert_common_headers(response)
        # The registry still works afterwards.
        ok = await _http.post(registry, "/servers", server_body("after"))
        assert ok.status == 200


async def test_a_body_past_the_limit_without_a_content_length_is_413(registry):
    """A chunked body gives no length up front: it is cut off once past the route's limit."""
    chunk = b"x" * 5000
    request = (
        b"POST /servers HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(chunk):x}\r\n".encode()
        + chunk
        + b"\r\n0\r\n\r\n"
    )
    host, port = registry.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(request)
            response = await _http._read_response(stream, "POST")
    assert_json_error(response, 413, "Request body too large")


async def test_an_id_with_slashes_and_plus_is_deleted_through_its_percent_encoding(registry):
    server_id = "ed25519:AbC+/x="
    with trio.fail_after(10):
        assert (
            await _http.post(registry, "/servers", server_body("x", serverId=server_id))
        ).status == 200
        assert [s["serverId"] for s in await signed_list(registry)] == [server_id]
        response = await delete(registry, "ed25519%3AAbC%2B%2Fx%3D")
        assert response.json() == {"success": True}
        assert await signed_list(registry) == []


async def test_leading_slashes_are_one_as_on_every_route(registry):
    """``//servers/x`` is ``/servers/x``, as ``//health`` is ``/health``: the id is still read
    from the raw path, after the same folding."""
    with trio.fail_after(10):
        assert (await _http.post(registry, "/servers", server_body("vps-1"))).status == 200
        response = await _http.request(registry, "DELETE", "//servers/vps-1")
        assert response.json() == {"success": True}
        assert await signed_list(registry) == []


async def test_an_unknown_method_on_the_registry_is_405(registry):
    with trio.fail_after(10):
        response = await _http.request(registry, "PUT", "/servers", body=b"{}")
    assert_json_error(response, 405, "Method Not Allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "POST"}


async def test_the_servers_command_verifies_what_the_real_server_sends(registry, capsys):
    with trio.fail_after(20):
        await _http.post(registry, "/servers", server_body("vps-1", region="eu"))
        argv = ["servers", "--url", registry, "--public-key", PUBLIC_KEY]
        assert await trio.to_thread.run_sync(cli.main, [*argv, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [server["serverId"] for server in listed] == ["vps-1"]
        assert await trio.to_thread.run_sync(cli.main, argv) == 0
        table = capsys.readouterr().out
        assert "vps-1" in table
        assert "wss://vps-1.relay.example.com/ws" in table
        other_key = crypto.public_key_b64(crypto.signing_key(bytes(32)))
        refused = ["servers", "--url", registry, "--public-key", other_key]
        assert await trio.to_thread.run_sync(cli.main, refused) == 1
        error = capsys.readouterr().err.splitlines()
        assert error == ["zajel: list signature does not verify with this public key"]
