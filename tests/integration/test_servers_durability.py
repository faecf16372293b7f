"""The store of a real ``zajel serve`` (docs/operations.md, "Storage"): the registry survives
SIGKILL right after the 200 replies (a new process on the same data directory lists every
acknowledged server, heartbeat and deletion) and a clean restart; a store that cannot be opened, and
a missing signing key outside development, stop the start with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from tests.integration import _http
from tests.integration._process import clean_environment, zajel_serve
from zajel import bootstrap, crypto
from zajel.clock import epoch_ms

SEED = bytes(range(32, 64))
PUBLIC_KEY = crypto.public_key_b64(crypto.signing_key(SEED))
ENV = {"ZAJEL_BOOTSTRAP_SIGNING_KEY": SEED.hex(), "ZAJEL_HTTP_RATE_PER_MINUTE": "100000"}
SERVERS = 40


def body(index: int, connections: int = 0) -> dict[str, object]:
    return {
        "serverId": f"vps-{index}",
        "endpoint": f"wss://vps-{index}.relay.example.com",
        "publicKey": f"pk-{index}",
        "region": "eu",
        "connections": connections,
    }


async def listed(url: str) -> dict[str, dict]:
    response = await _http.get(url, "/servers")
    servers = bootstrap.verify_server_list(
        response.body, response.headers["x-bootstrap-signature"], PUBLIC_KEY, now_ms=epoch_ms()
    )
    return {server["serverId"]: server for server in servers}


async def test_every_acknowledged_write_survives_sigkill(tmp_path):
    acknowledged: dict[str, dict] = {}
    with trio.fail_after(60):
        async with zajel_serve(tmp_path, env=ENV) as (process, url):

            async def register(index: int) -> None:
                response = await _http.post(url, "/servers", body(index))
                assert response.status == 200
                acknowledged[f"vps-{index}"] = response.json()["server"]

            # Concurrent requests: several of them share one commit.
            async with trio.open_nursery() as nursery:
                for index in range(SERVERS):
                    nursery.start_soon(register, index)
            beat = await _http.post(
                url, "/servers/heartbeat", {"serverId": "vps-0", "connections": 7}
            )
            assert beat.status == 200
            gone = await _http.request(url, "DELETE", "/servers/vps-1")
            assert gone.status == 200
            process.kill()  # SIGKILL: no shutdown, no flush
            await process.wait()

        async with zajel_serve(tmp_path, env=ENV) as (_, url):
            servers = await listed(url)
    assert set(servers) == set(acknowledged) - {"vps-1"}
    assert servers["vps-0"]["connections"] == 7
    for server_id, entry in acknowledged.items():
        if server_id not in ("vps-0", "vps-1"):
            assert servers[server_id] == entry
    # The restarted server found a clean store: nothing to repair, nothing failed.
    logs = (tmp_path / "stderr.log").read_text()
    assert " ERROR " not in logs
    assert "loaded servers=" in logs


async def test_a_clean_restart_keeps_the_registry_too(tmp_path):
    with trio.fail_after(60):
        async with zajel_serve(tmp_path, env=ENV) as (process, url):
            response = await _http.post(url, "/servers", body(1, connections=3))
            assert response.status == 200
            process.terminate()
            assert await process.wait() == 0
        async with zajel_serve(tmp_path, env=ENV) as (_, url):
            servers = await listed(url)
    assert list(servers) == ["vps-1"]
    assert servers["vps-1"] == json.loads(response.body)["server"]


async def run_serve(tmp_path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    with trio.fail_after(20):
        return await trio.run_process(
            [sys.executable, "-m", "zajel", "serve", "--port", "0"],
            cwd=tmp_path,
            env={**clean_environment(), **(env or {})},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def last_line(finished: subprocess.CompletedProcess) -> str:
    assert finished.returncode == 2
    text = finished.stderr.decode()
    assert "Traceback" not in text
    return text.splitlines()[-1]


async def test_a_second_server_on_the_same_data_directory_is_refused(tmp_path):
    async with zajel_serve(tmp_path, env=ENV):
        finished = await run_serve(tmp_path, ENV)
    assert last_line(finished) == (
        "zajel: cannot open the store (ZAJEL_DATA_DIR): data is in use by another zajel "
        "process (one process per data directory)"
    )


async def test_a_data_file_that_is_not_a_database_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "zajel.db").write_bytes(b"not a database " * 300)
    line = last_line(await run_serve(tmp_path))
    assert line.startswith("zajel: cannot open the store (ZAJEL_DATA_DIR): data/zajel.db ")
    assert "not a usable database" in line


@pytest.mark.parametrize("env", ["production", "qa"])
async def test_production_and_qa_refuse_to_start_without_a_signing_key(tmp_path, env):
    line = last_line(
        await run_serve(tmp_path, {"ZAJEL_ENV": env, "ZAJEL_ATTESTATION_SIGNING_KEY": "6f" * 32})
    )
    assert line == (
        f"zajel: configuration error: ZAJEL_BOOTSTRAP_SIGNING_KEY: required in {env}; "
        "make one with `zajel keygen`"
    )
