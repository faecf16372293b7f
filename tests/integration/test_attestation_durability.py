"""Attestation survives a crash (docs/protocol/attestation.md, "Durability"): a real ``zajel serve``
is killed with SIGKILL right after it acknowledged an upload, a registration and a challenge;
after a restart on the same data directory the reference, the devices (a web one too, in its own
space) and the nonce are all there, the verify succeeds, and the known devices re-register without
counting as new."""

from __future__ import annotations

import trio

from tests.integration import _http
from tests.integration._process import zajel_serve
from tests.integration.test_attestation_http import (
    ATTESTATION_PUBLIC_KEY,
    ATTESTATION_SEED,
    CI,
    CI_SECRET,
    PIPELINE_SEED,
    VERSION,
    answers,
    build_token,
    reference_body,
)
from zajel import crypto
from zajel.attestation import verify_session_token
from zajel.clock import epoch_ms

ENV = {
    "ZAJEL_ATTESTATION_SIGNING_KEY": ATTESTATION_SEED.hex(),
    "ZAJEL_BUILD_TOKEN_VERIFY_KEY": crypto.public_key_b64(crypto.signing_key(PIPELINE_SEED)),
    "ZAJEL_CI_UPLOAD_SECRET": CI_SECRET,
    "ZAJEL_HTTP_RATE_PER_MINUTE": "100000",
    "ZAJEL_ATTEST_REGISTRATIONS_PER_IP_PER_HOUR": "2",
}


async def test_reference_device_and_nonce_survive_sigkill(tmp_path):
    with trio.fail_after(60):
        async with zajel_serve(tmp_path, env=ENV) as (process, url):
            uploaded = await _http.post(
                url, "/attest/upload-reference", reference_body(), headers=CI
            )
            assert uploaded.status == 200
            body = {"device_id": "device-1", "build_token": build_token()}
            assert (await _http.post(url, "/attest/register", body)).status == 200
            web = {"device_id": "browser-1", "build_token": build_token(platform="web")}
            assert (await _http.post(url, "/attest/register", web)).status == 200
            third = {"device_id": "device-3", "build_token": build_token()}
            assert (await _http.post(url, "/attest/register", third)).status == 429
            request = {"device_id": "device-1", "build_version": VERSION}
            issued = await _http.post(url, "/attest/challenge", request)
            assert issued.status == 200
            process.kill()  # SIGKILL right after the acknowledgements: no shutdown, no flush
            await process.wait()

        async with zajel_serve(tmp_path, env=ENV) as (_, url):
            nonce = issued.json()["nonce"]
            response = await _http.post(
                url,
                "/attest/verify",
                {"device_id": "device-1", "nonce": nonce, "responses": answers(issued.json())},
            )
            assert response.status == 200, response.body
            assert response.json()["valid"] is True
            claims = verify_session_token(
                response.json()["session_token"], ATTESTATION_PUBLIC_KEY, now_ms=epoch_ms()
            )
            assert claims.device_id == "device-1"
            for known in (body, web):
                again = await _http.post(url, "/attest/register", known)
                assert again.status == 200, again.body
            assert again.json()["attestation_mode"] == "web_fallback"
            stats = (await _http.get(url, "/stats")).json()["attestation"]
    assert stats["devices"] == 2
    assert stats["references"] == 1
    assert stats["openChallenges"] == 0  # used up by the verify
