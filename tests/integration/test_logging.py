"""Logs of a real ``zajel serve`` (docs/operations.md, "Logging"): outside development every pairing
code is redacted (``ABC234`` -> ``A****4``); in development codes are logged in full; clients'
public keys are never logged, and production and qa log the server's own at start. A request
crafted to plant a line in the text log stays one line."""

from __future__ import annotations

import json
import signal

import pytest
import trio

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration._process import zajel_serve
from tests.test_logs import parse_text_line
from zajel import logs
from zajel.client import connect_signal, generate_public_key, pair
from zajel.crypto import public_key_b64, signing_key
from zajel.logs import redact

CODES = ("ABC234", "XYZ789")
SEEDS = {"ZAJEL_BOOTSTRAP_SIGNING_KEY": "5e" * 32, "ZAJEL_ATTESTATION_SIGNING_KEY": "6f" * 32}


async def run_session_and_read_logs(tmp_path, env: str) -> tuple[list[dict], list[str]]:
    keys = [generate_public_key(), generate_public_key()]
    with trio.fail_after(30):
        async with zajel_serve(
            tmp_path,
            "--env",
            env,
            "--log-format",
            "json",
            env={"ZAJEL_LOG_LEVEL": "debug", **SEEDS},
        ) as (process, url):
            async with connect_signal(url) as a, connect_signal(url) as b:
                await a.register(CODES[0], keys[0])
                await b.register(CODES[1], keys[1])
                await pair(a, b)
                async with connect_signal(url) as thief:  # logged as "pairing code in use"
                    await thief.send({"type": "register", "pairingCode": CODES[0]})
                    await thief.expect("error")
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    text = (tmp_path / "stderr.log").read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return entries, keys


@pytest.mark.parametrize("env", ["production", "qa"])
async def test_codes_are_redacted_outside_development(tmp_path, env):
    entries, keys = await run_session_and_read_logs(tmp_path, env)
    text = "\n".join(json.dumps(entry) for entry in entries)
    messages = {entry["message"] for entry in entries}
    assert {"registered", "pair request", "pair matched", "pairing code in use"} <= messages
    for code in CODES:
        assert code not in text
        assert redact(code) in text
    for key in keys:
        assert key not in text
    # The public keys the server signs with, once at start; never their seeds.
    signing = {entry["setting"]: entry["public_key"] for entry in entries if "setting" in entry}
    assert signing == {
        name: public_key_b64(signing_key(bytes.fromhex(seed))) for name, seed in SEEDS.items()
    }
    for seed in SEEDS.values():
        assert seed not in text


async def test_codes_are_logged_in_full_in_development(tmp_path):
    entries, keys = await run_session_and_read_logs(tmp_path, "development")
    matched = next(entry for entry in entries if entry["message"] == "pair matched")
    assert (matched["requester"], matched["responder"]) == CODES
    text = "\n".join(json.dumps(entry) for entry in entries)
    for key in keys:
        assert key not in text


FORGED_LINE = "2026-01-01T00:00:00.000Z INFO zajel.server: stopped status=200"


# Line breaks: CR LF, CR, LF, a CR that first erases the terminal's line, U+2028, NEL.
@pytest.mark.parametrize("breaker", ["%0d%0a", "%0d", "%0a", "%1b%5b2K%0d", "%e2%80%a8", "%c2%85"])
async def test_a_crafted_path_cannot_plant_a_log_line_or_a_pair(
    nursery, capsys, restore_logging, breaker
):
    """``DELETE /servers/<id>`` is refused and its path logged: the line break and the fake line
    that follows it stay inside the one ``path`` value of the one event."""
    logs.configure("INFO", "text")  # the server's own set-up, writing to the captured stderr
    running = await start_server(nursery, make_config())
    forged = FORGED_LINE.replace(" ", "%20")
    with trio.fail_after(10):
        response = await _http.request(running.url, "DELETE", f"/servers/x{breaker}{forged}")
    assert response.status == 400
    running.stop.set()
    lines = capsys.readouterr().err.splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)
    refused = [parse_text_line(line) for line in lines if "request refused" in line]
    assert len(refused) == 1
    level, logger, message, pairs = refused[0]
    assert (level, logger, message) == ("INFO", "zajel.web", "request refused")
    assert list(pairs) == ["method", "path", "status", "error"]
    assert pairs["status"] == "400"
    assert pairs["path"].startswith("/servers/x")
    assert pairs["path"].endswith(FORGED_LINE)
    for line in lines:  # every event of the run reads back as one well-formed line
        parse_text_line(line)
