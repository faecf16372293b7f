"""The data directory stops taking writes under a running ``zajel serve`` (docs/operations.md,
"Storage"): writes answer 503 ``Storage unavailable, try again`` and nothing half-done is kept,
reads still work, ``/health`` is degraded naming ``"store"``; once the directory takes writes
again the server recovers by itself, and what it acknowledged survives a restart.

How the writes are stopped: an open SQLite database keeps writing through its open files when
its directory and files are made read-only with ``chmod`` (even for an unprivileged process), so
``chmod`` cannot produce this fault; a read-only remount or a bind mount needs privileges these
tests do not take. The file size limit does it for real, for any user: with ``RLIMIT_FSIZE`` of
the running process set to 0 (``prlimit``), every write to a regular file fails in the kernel
(``EFBIG``) as on a full or failing disk, and SQLite reports it as it would any failed write.
The process's log file is a regular file too, so the lines logged meanwhile are lost; the ones
after the recovery are checked. ``tests/integration/test_store_failures.py`` tests the same rules
in process, with a store whose failures are switched on and off.
"""

from __future__ import annotations

import resource

import trio

from tests.integration import _http
from tests.integration._process import zajel_serve
from tests.integration.test_http import assert_json_error
from tests.integration.test_servers_durability import ENV, body, listed

STORE_UNAVAILABLE = "Storage unavailable, try again"


def limit_file_size(pid: int, size: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (size if size >= 0 else hard, hard))


async def test_writes_fail_with_503_and_health_degraded_then_recover(tmp_path):
    with trio.fail_after(30):
        async with zajel_serve(tmp_path, env=ENV) as (process, url):
            assert (await _http.post(url, "/servers", body(1))).status == 200
            assert (await _http.get(url, "/health")).status == 200

            limit_file_size(process.pid, 0)  # from now on no write reaches the disk
            try:
                for index in (2, 3):
                    refused = await _http.post(url, "/servers", body(index))
                    assert_json_error(refused, 503, STORE_UNAVAILABLE)
                beat = await _http.post(url, "/servers/heartbeat", {"serverId": "vps-1"})
                assert_json_error(beat, 503, STORE_UNAVAILABLE)
                # Reads are served from memory, which holds only what was committed.
                assert list(await listed(url)) == ["vps-1"]
                for _ in range(2):  # it stays degraded: the write probe fails too
                    health = await _http.get(url, "/health")
                    assert health.status == 503
                    assert health.json()["status"] == "degraded"
                    assert health.json()["failing"] == ["store"]
            finally:
                limit_file_size(process.pid, -1)

            health = await _http.get(url, "/health")
            assert health.status == 200, health.body
            assert health.json()["status"] == "ok"
            assert (await _http.post(url, "/servers", body(4))).status == 200
            assert sorted(await listed(url)) == ["vps-1", "vps-4"]
            process.terminate()
            assert await process.wait() == 0
        logs = (tmp_path / "stderr.log").read_text()
        assert "store takes writes again" in logs
        assert "Traceback" not in logs

        async with zajel_serve(tmp_path, env=ENV) as (_, url):
            assert sorted(await listed(url)) == ["vps-1", "vps-4"]
