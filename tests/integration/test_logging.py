"""Logs of a real ``zajel serve`` (operations.md, Logging): outside development every pairing
code is redacted (``ABC234`` -> ``A****4``); in development codes are logged in full; public keys
are never logged."""

from __future__ import annotations

import json
import signal

import pytest
import trio

from tests.integration._process import zajel_serve
from zajel.client import connect_signal, generate_public_key, pair
from zajel.logs import redact

CODES = ("ABC234", "XYZ789")


async def run_session_and_read_logs(tmp_path, env: str) -> tuple[list[dict], list[str]]:
    keys = [generate_public_key(), generate_public_key()]
    with trio.fail_after(30):
        async with zajel_serve(
            tmp_path,
            "--env",
            env,
            "--log-format",
            "json",
            env={
                "ZAJEL_LOG_LEVEL": "debug",
                "ZAJEL_BOOTSTRAP_SIGNING_KEY": "5e" * 32,
                "ZAJEL_ATTESTATION_SIGNING_KEY": "6f" * 32,
            },
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


async def test_codes_are_logged_in_full_in_development(tmp_path):
    entries, keys = await run_session_and_read_logs(tmp_path, "development")
    matched = next(entry for entry in entries if entry["message"] == "pair matched")
    assert (matched["requester"], matched["responder"]) == CODES
    text = "\n".join(json.dumps(entry) for entry in entries)
    for key in keys:
        assert key not in text
