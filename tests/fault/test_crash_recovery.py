"""SIGKILL in the middle of a stream of writes (docs/operations.md, "Storage"): several clients
keep registering servers, heartbeating them and registering attestation devices on a real
``zajel serve``, many requests in flight at once, when the process is killed. A new process on
the same data directory has every write that got its 200, whatever was in flight.

``tests/integration/test_servers_durability.py`` and ``test_attestation_durability.py`` kill the
process once every reply has arrived; here the kill lands while commits and replies are under
way."""

from __future__ import annotations

import trio

from tests.integration import _http
from tests.integration._process import zajel_serve
from tests.integration.test_attestation_durability import ENV as ATTESTATION_ENV
from tests.integration.test_attestation_http import build_token
from tests.integration.test_servers_durability import ENV as SERVERS_ENV
from tests.integration.test_servers_durability import body, listed

ENV = {
    **SERVERS_ENV,
    **ATTESTATION_ENV,
    "ZAJEL_ATTEST_REGISTRATIONS_PER_IP_PER_HOUR": "100000",
}
CLIENTS = 8
ROUNDS = 200  # the most each client sends; the kill comes long before
KILL_AFTER = 120  # acknowledged writes before the kill


class Acknowledged:
    """What the server answered 200 to, by kind."""

    def __init__(self) -> None:
        self.servers: dict[str, dict] = {}
        self.beats: dict[str, int] = {}  # serverId -> the highest acknowledged counter
        self.devices: set[str] = set()
        self.count = 0
        self.cut = 0  # writers whose request in flight got no answer
        self.enough = trio.Event()

    def one(self) -> None:
        self.count += 1
        if self.count >= KILL_AFTER:
            self.enough.set()


async def writer(url: str, client: int, acked: Acknowledged) -> None:
    """Register, heartbeat and register a device, over and over, until the server is gone."""
    server_id = f"vps-{client}"
    try:
        for index in range(ROUNDS):
            if index == 0:
                response = await _http.post(url, "/servers", body(client))
                assert response.status == 200, response.body
                acked.servers[server_id] = response.json()["server"]
            else:
                beat = {"serverId": server_id, "connections": index}
                response = await _http.post(url, "/servers/heartbeat", beat)
                assert response.status == 200, response.body
                acked.beats[server_id] = index  # heartbeats of one client are sequential
            acked.one()
            device = f"device-{client}-{index}"
            token = build_token()
            response = await _http.post(
                url, "/attest/register", {"device_id": device, "build_token": token}
            )
            assert response.status == 200, response.body
            acked.devices.add(device)
            acked.one()
    except (OSError, ConnectionError, trio.BrokenResourceError):
        acked.cut += 1  # killed: this request got no answer, and counts as not acknowledged


async def test_nothing_acknowledged_is_lost_when_killed_mid_stream(tmp_path):
    acked = Acknowledged()
    with trio.fail_after(60):
        async with (
            zajel_serve(tmp_path, env=ENV) as (process, url),
            trio.open_nursery() as nursery,
        ):
            for client in range(CLIENTS):
                nursery.start_soon(writer, url, client, acked)
            await acked.enough.wait()
            process.kill()  # SIGKILL with requests still in flight
            await process.wait()
        assert acked.count >= KILL_AFTER
        assert acked.cut == CLIENTS  # the kill landed with every writer's request in flight

        # The per-IP budget of new devices is 1 from now on: the first new id spends it, so a
        # device the store had lost would be refused (429) when it registers again.
        restart_env = {**ENV, "ZAJEL_ATTEST_REGISTRATIONS_PER_IP_PER_HOUR": "1"}
        async with zajel_serve(tmp_path, env=restart_env) as (_, url):
            servers = await listed(url)
            fresh = await _http.post(
                url, "/attest/register", {"device_id": "fresh", "build_token": build_token()}
            )
            assert fresh.status == 200
            refused = await _http.post(
                url, "/attest/register", {"device_id": "fresh-2", "build_token": build_token()}
            )
            assert refused.status == 429
            for device in sorted(acked.devices):
                again = await _http.post(
                    url, "/attest/register", {"device_id": device, "build_token": build_token()}
                )
                assert again.status == 200, (device, again.body)
            stats = (await _http.get(url, "/stats")).json()["attestation"]

    assert set(acked.servers) <= set(servers)
    for server_id, entry in acked.servers.items():
        kept = servers[server_id]
        for field in ("serverId", "endpoint", "publicKey", "region", "registeredAt"):
            assert kept[field] == entry[field]
        # A heartbeat in flight at the kill may have been committed unanswered: never less.
        assert kept["connections"] >= acked.beats.get(server_id, 0)
    assert stats["devices"] >= len(acked.devices) + 1
    logs = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in logs
