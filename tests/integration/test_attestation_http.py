"""The AttestationRegistry over real HTTP (docs/protocol/attestation.md): the whole pipeline ->
device flow with a reference made from a real binary, the attacks that must fail, and bad input
on every route."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import make_config, start_server
from tests.integration import _http
from tests.integration.test_http import assert_common_headers, assert_json_error
from zajel import crypto
from zajel.attestation import (
    make_reference,
    region_hmacs,
    sign_build_token,
    verify_session_token,
)
from zajel.clock import epoch_ms

PIPELINE_SEED = bytes(range(100, 132))
ATTESTATION_SEED = bytes(range(200, 232))
ATTESTATION_PUBLIC_KEY = crypto.public_key_b64(crypto.signing_key(ATTESTATION_SEED))
CI_SECRET = "ci-upload-secret-for-tests"
CI = {"Authorization": f"Bearer {CI_SECRET}"}
VERSION = "1.2.0"
PLATFORM = "android"
DAY_MS = 24 * 3600 * 1000
# The binary the "genuine build" is: the interpreter running these tests, a real executable.
BINARY = Path(sys.executable).resolve().read_bytes()


def attestation_config(**overrides: Any):
    values: dict[str, Any] = {
        "attestation_signing_key": ATTESTATION_SEED.hex(),
        "build_token_verify_key": crypto.public_key_b64(crypto.signing_key(PIPELINE_SEED)),
        "ci_upload_secret": CI_SECRET,
        "http_rate_per_minute": 100_000,
        "ws_idle_timeout": 86_400.0,
    }
    values.update(overrides)
    return make_config(**values)


@pytest.fixture
async def attest(nursery):
    running = await start_server(nursery, attestation_config())
    yield running.url
    running.stop.set()


def reference_body(version: str = VERSION) -> dict[str, Any]:
    return make_reference(BINARY, version=version, platform=PLATFORM, regions=8)


def build_token(
    version: str = VERSION, *, seed: bytes = PIPELINE_SEED, age_ms: int = 0, platform=PLATFORM
) -> dict[str, str]:
    return sign_build_token(
        seed,
        version=version,
        platform=platform,
        build_hash="sha256-of-the-build",
        timestamp_ms=epoch_ms() - age_ms,
    )


async def upload(url: str, body: dict[str, Any]) -> _http.HttpResponse:
    return await _http.post(url, "/attest/upload-reference", body, headers=CI)


async def register(url: str, device_id: str, token: dict[str, str] | None = None):
    body = {"device_id": device_id, "build_token": token or build_token()}
    return await _http.post(url, "/attest/register", body)


async def challenge(url: str, device_id: str, version: str = VERSION) -> dict[str, Any]:
    response = await _http.post(
        url, "/attest/challenge", {"device_id": device_id, "build_version": version}
    )
    assert response.status == 200, response.body
    return response.json()


def answers(issued: dict[str, Any], data: bytes = BINARY) -> list[dict[str, Any]]:
    places = [(region["offset"], region["length"]) for region in issued["regions"]]
    hmacs = region_hmacs(data, issued["nonce"], places)
    return [
        {"region_index": region["index"], "hmac": hmac}
        for region, hmac in zip(issued["regions"], hmacs, strict=True)
    ]


async def verify(url: str, device_id: str, nonce: str, responses: list[dict[str, Any]]):
    body = {"device_id": device_id, "nonce": nonce, "responses": responses}
    return await _http.post(url, "/attest/verify", body)


async def ready_device(url: str, device_id: str = "device-1") -> None:
    assert (await upload(url, reference_body())).status == 200
    assert (await register(url, device_id)).status == 200


async def test_the_whole_flow_gives_a_session_token_verify_session_token_accepts(attest):
    with trio.fail_after(20):
        reference = reference_body()
        uploaded = await upload(attest, reference)
        assert uploaded.status == 200
        assert uploaded.json()["success"] is True
        assert uploaded.json()["reference"]["critical_regions"] == reference["critical_regions"]

        registered = await register(attest, "device-1")
        assert registered.status == 200
        body = registered.json()
        assert body["status"] == "registered"
        assert body["version_status"] == "current"
        assert "session_token" not in body
        assert body["device"]["device_id"] == "device-1"
        assert body["device"]["build_version"] == VERSION

        issued = await challenge(attest, "device-1")
        assert len(issued["nonce"]) == 64
        assert 3 <= len(issued["regions"]) <= 5
        assert [r["index"] for r in issued["regions"]] == list(range(len(issued["regions"])))

        before = epoch_ms()
        verified = await verify(attest, "device-1", issued["nonce"], answers(issued))
        assert verified.status == 200
        assert_common_headers(verified)
        assert verified.json()["valid"] is True
        claims = verify_session_token(
            verified.json()["session_token"], ATTESTATION_PUBLIC_KEY, now_ms=epoch_ms()
        )
    assert (claims.device_id, claims.build_version, claims.platform) == (
        "device-1",
        VERSION,
        PLATFORM,
    )
    assert claims.trust_level == "attested"
    assert before - 1000 <= claims.issued_at <= epoch_ms() + 1000
    assert claims.expires_at - claims.issued_at == 3_600_000


async def test_a_web_build_registers_without_a_binary_and_gets_a_short_weaker_token(attest):
    with trio.fail_after(20):
        token = build_token(platform="web")
        response = await register(attest, "browser-1", token)
        assert response.status == 200
        body = response.json()
        assert body["attestation_mode"] == "web_fallback"
        claims = verify_session_token(
            body["session_token"], ATTESTATION_PUBLIC_KEY, now_ms=epoch_ms()
        )
        assert claims.trust_level == "web_fallback"
        assert claims.expires_at - claims.issued_at == 15 * 60 * 1000
        refused = await _http.post(
            attest, "/attest/challenge", {"device_id": "browser-1", "build_version": VERSION}
        )
        assert_json_error(
            refused,
            400,
            "Binary attestation not available for web platform. Use registration token.",
        )
        for _ in range(9):
            assert (await register(attest, "browser-1", build_token(platform="web"))).status == 200
        limited = await register(attest, "browser-1", build_token(platform="web"))
        assert limited.status == 429


# -- the attacks --------------------------------------------------------------------------------


async def test_the_same_region_index_repeated_fails(attest):
    with trio.fail_after(20):
        await ready_device(attest)
        issued = await challenge(attest, "device-1")
        right = answers(issued)
        # Every answer names region 0, the one region an attacker knows.
        repeated = [{"region_index": 0, "hmac": right[0]["hmac"]} for _ in right]
        response = await verify(attest, "device-1", issued["nonce"], repeated)
    assert response.json() == {"valid": False, "error": "Verification failed"}


async def test_a_challenge_for_another_version_than_the_registered_one_fails(attest):
    with trio.fail_after(20):
        await ready_device(attest)
        assert (await upload(attest, reference_body("1.3.0"))).status == 200
        response = await _http.post(
            attest, "/attest/challenge", {"device_id": "device-1", "build_version": "1.3.0"}
        )
    assert_json_error(response, 403, "Build version does not match registration")


async def test_a_version_blocked_after_registration_fails_at_challenge_and_at_verify(attest):
    with trio.fail_after(20):
        await ready_device(attest)
        issued = await challenge(attest, "device-1")
        block = {"blocked_versions": [VERSION]}
        assert (await _http.post(attest, "/attest/versions", block, headers=CI)).status == 200
        reason = f"Version {VERSION} has been blocked"
        response = await verify(attest, "device-1", issued["nonce"], answers(issued))
        assert_json_error(response, 403, reason)
        refused = await _http.post(
            attest, "/attest/challenge", {"device_id": "device-1", "build_version": VERSION}
        )
        assert_json_error(refused, 403, reason)
        assert_json_error(await register(attest, "device-2"), 403, reason)


async def test_a_nonce_is_used_once(attest):
    with trio.fail_after(20):
        await ready_device(attest)
        issued = await challenge(attest, "device-1")
        assert (await verify(attest, "device-1", issued["nonce"], answers(issued))).json()["valid"]
        again = await verify(attest, "device-1", issued["nonce"], answers(issued))
    assert_json_error(again, 403, "Invalid or expired nonce")


async def test_a_nonce_of_another_device_fails_and_stays_usable_by_its_own(attest):
    with trio.fail_after(20):
        await ready_device(attest)
        assert (await register(attest, "device-2")).status == 200
        issued = await challenge(attest, "device-1")
        stolen = await verify(attest, "device-2", issued["nonce"], answers(issued))
        assert_json_error(stolen, 403, "Device ID mismatch")
        own = await verify(attest, "device-1", issued["nonce"], answers(issued))
    assert own.json()["valid"] is True


async def test_an_expired_nonce_fails(attest, clock):
    with trio.fail_after(20 + 301):  # the jump advances this deadline's clock too
        await ready_device(attest)
        issued = await challenge(attest, "device-1")
        clock.jump(5 * 60 + 1)
        response = await verify(attest, "device-1", issued["nonce"], answers(issued))
    # The sweep, due 5 minutes after the server started, runs before the verify and deletes
    # the 301 s old nonce (the state tests check "Challenge expired" before a sweep).
    assert_json_error(response, 403, "Invalid or expired nonce")


@pytest.mark.parametrize(
    ("spoil", "error"),
    [
        (lambda hmac: hmac.upper(), "HMAC mismatch"),
        (lambda hmac: ("0" if hmac[0] != "0" else "1") + hmac[1:], "HMAC mismatch"),
    ],
    ids=["uppercase", "wrong"],
)
async def test_an_uppercase_or_wrong_hmac_fails(attest, spoil, error):
    with trio.fail_after(20):
        await ready_device(attest)
        issued = await challenge(attest, "device-1")
        spoiled = answers(issued)
        spoiled[-1]["hmac"] = spoil(spoiled[-1]["hmac"])
        response = await verify(attest, "device-1", issued["nonce"], spoiled)
    assert response.json() == {"valid": False, "error": error}


async def test_hmacs_of_another_binary_fail(attest):
    with trio.fail_after(20):
        await ready_device(attest)
        issued = await challenge(attest, "device-1")
        modified = bytes(b ^ 0x01 for b in BINARY)
        response = await verify(attest, "device-1", issued["nonce"], answers(issued, modified))
    assert response.json() == {"valid": False, "error": "HMAC mismatch"}


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        (lambda: build_token(seed=bytes(32)), 403, "Invalid build token signature"),
        (lambda: build_token(age_ms=31 * DAY_MS), 403, "Build token expired"),
        (lambda: build_token(age_ms=-2 * 60 * 1000), 403, "Build token has a future timestamp"),
    ],
    ids=["wrong-key", "31-days-old", "2-minutes-ahead"],
)
async def test_a_bad_build_token_is_refused(attest, token, status, message):
    with trio.fail_after(10):
        response = await register(attest, "device-1", token())
    assert_json_error(response, status, message)


async def test_six_open_challenges_are_too_many(attest):
    with trio.fail_after(20):
        await ready_device(attest)
        for _ in range(5):
            await challenge(attest, "device-1")
        response = await _http.post(
            attest, "/attest/challenge", {"device_id": "device-1", "build_version": VERSION}
        )
    assert response.status == 429
    assert response.json()["error"].startswith("Too many pending challenges")


async def test_the_version_policy_is_public_and_set_with_the_ci_secret(attest):
    with trio.fail_after(20):
        default = await _http.get(attest, "/attest/versions")
        assert default.json() == {
            "minimum_version": "1.0.0",
            "recommended_version": "1.0.0",
            "blocked_versions": [],
            "sunset_dates": {},
        }
        policy = {
            "minimum_version": "1.1.0",
            "recommended_version": "1.5.0",
            "blocked_versions": ["1.1.3"],
            "sunset_dates": {"1.1.0": "2020-01-01"},
        }
        response = await _http.post(attest, "/attest/versions", policy, headers=CI)
        assert response.json() == {"success": True, "policy": policy}
        assert (await _http.get(attest, "/attest/versions")).json() == policy
        assert (await upload(attest, reference_body())).status == 200
        registered = (await register(attest, "device-1")).json()
        assert registered["version_status"] == "update_recommended"
        assert registered["recommended_version"] == "1.5.0"
        sunset = await register(attest, "device-2", build_token("1.1.0"))
        assert_json_error(sunset, 403, "Version 1.1.0 reached its sunset date 2020-01-01")
        below = await register(attest, "device-3", build_token("1.0.9"))
        assert_json_error(below, 403, "Version 1.0.9 is below minimum required version 1.1.0")


# -- configuration ------------------------------------------------------------------------------


async def test_without_keys_and_secrets_the_routes_say_what_is_not_configured(nursery):
    running = await start_server(nursery, make_config(http_rate_per_minute=100_000))
    url = running.url
    with trio.fail_after(10):
        assert_json_error(
            await register(url, "device-1"), 503, "Build token verification not configured"
        )
        assert_json_error(
            await _http.post(url, "/attest/upload-reference", reference_body(), headers=CI),
            503,
            "CI upload not configured",
        )
        assert_json_error(
            await _http.post(url, "/attest/versions", {}, headers=CI),
            503,
            "Admin access not configured",
        )
        assert (await _http.get(url, "/attest/versions")).status == 200


@pytest.mark.parametrize("path", ["/attest/upload-reference", "/attest/versions"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": CI_SECRET}],
    ids=["none", "wrong", "no-scheme"],
)
async def test_the_ci_routes_need_the_bearer(attest, path, headers):
    with trio.fail_after(10):
        response = await _http.post(attest, path, reference_body(), headers=headers)
    assert_json_error(response, 401, "Unauthorized")


# -- bad input ------------------------------------------------------------------------------------

MISSING_REGISTER = "Missing required fields: build_token, device_id"
MISSING_CHALLENGE = "Missing required fields: device_id, build_version"
MISSING_VERIFY = "Missing required fields: device_id, nonce, responses (array)"
BAD_TOKEN = "Invalid build_token format: must include payload and signature"
REGIONS = "critical_regions must be a non-empty array of { offset, length, data_hex } objects"


def raw(value: Any) -> bytes:
    return json.dumps(value).encode()


BAD_INPUT: list[tuple[str, bytes, int, str]] = [
    ("/attest/register", b"", 400, "Request body is empty: expected a JSON object"),
    ("/attest/register", b"{", 400, "Invalid JSON body"),
    ("/attest/register", b"[]", 400, "Request body must be a JSON object"),
    ("/attest/register", raw({}), 400, MISSING_REGISTER),
    ("/attest/register", raw({"device_id": "d", "build_token": None}), 400, MISSING_REGISTER),
    ("/attest/register", raw({"device_id": 5, "build_token": {}}), 400, "Invalid device_id format"),
    (
        "/attest/register",
        raw({"device_id": "a b", "build_token": {"payload": "p", "signature": "s"}}),
        400,
        "Invalid device_id format",
    ),
    ("/attest/register", raw({"device_id": "d", "build_token": "x"}), 400, BAD_TOKEN),
    ("/attest/register", raw({"device_id": "d", "build_token": {"payload": 1}}), 400, BAD_TOKEN),
    (
        "/attest/register",
        raw({"device_id": "d", "build_token": {"payload": "p", "signature": ["s"]}}),
        400,
        BAD_TOKEN,
    ),
    (
        "/attest/register",
        raw({"device_id": "d", "build_token": {"payload": "p" * 9000, "signature": "s"}}),
        413,
        "Request body too large",
    ),
    ("/attest/challenge", b"null", 400, "Request body must be a JSON object"),
    ("/attest/challenge", raw({"device_id": "d"}), 400, MISSING_CHALLENGE),
    (
        "/attest/challenge",
        raw({"device_id": "d", "build_version": "1.2"}),
        400,
        "Invalid build_version format",
    ),
    (
        "/attest/challenge",
        raw({"device_id": "d", "build_version": 120}),
        400,
        "Invalid build_version format",
    ),
    ("/attest/challenge", raw({"device_id": "x" * 3000}), 413, "Request body too large"),
    (
        "/attest/challenge",
        raw({"device_id": "ghost", "build_version": VERSION}),
        404,
        "Device not registered",
    ),
    ("/attest/verify", raw({"device_id": "d", "nonce": "n"}), 400, MISSING_VERIFY),
    ("/attest/verify", raw({"device_id": "d", "nonce": "n", "responses": {}}), 400, MISSING_VERIFY),
    ("/attest/verify", raw({"device_id": "d", "nonce": 7, "responses": []}), 400, MISSING_VERIFY),
    (
        "/attest/verify",
        raw({"device_id": "d", "nonce": "n", "responses": [{"region_index": "0", "hmac": "h"}]}),
        400,
        "Invalid region_index: must be an integer",
    ),
    (
        "/attest/verify",
        raw({"device_id": "d", "nonce": "n", "responses": [{"region_index": 1.0, "hmac": "h"}]}),
        400,
        "Invalid region_index: must be an integer",
    ),
    (
        "/attest/verify",
        raw({"device_id": "d", "nonce": "n", "responses": [{"region_index": 0, "hmac": 5}]}),
        400,
        "Invalid hmac: must be a string",
    ),
    (
        "/attest/verify",
        raw({"device_id": "d", "nonce": "n", "responses": [{"region_index": 0, "hmac": "h"}]}),
        403,
        "Invalid or expired nonce",
    ),
    (
        "/attest/verify",
        raw({"device_id": "d", "nonce": "n", "responses": ["x" * 17000]}),
        413,
        "Request body too large",
    ),
]
CI_INPUT: list[tuple[str, bytes, int, str]] = [
    ("/attest/upload-reference", b"{]", 400, "Invalid JSON body"),
    (
        "/attest/upload-reference",
        raw({"version": "1.0.0", "platform": "android"}),
        400,
        "Missing required fields: version, platform, build_hash",
    ),
    (
        "/attest/upload-reference",
        raw({"version": "v1", "platform": "android", "build_hash": "h", "critical_regions": []}),
        400,
        "Invalid version or platform format",
    ),
    (
        "/attest/upload-reference",
        raw({"version": "1.0.0", "platform": "android", "build_hash": "h", "critical_regions": []}),
        400,
        REGIONS,
    ),
    (
        "/attest/upload-reference",
        raw(
            {
                "version": "1.0.0",
                "platform": "android",
                "build_hash": "h",
                "critical_regions": [{"offset": "0", "length": 2, "data_hex": "abcd"}],
            }
        ),
        400,
        "Each critical_region must have numeric offset and length",
    ),
    (
        "/attest/upload-reference",
        raw(
            {
                "version": "1.0.0",
                "platform": "android",
                "build_hash": "h",
                "critical_regions": [{"offset": 0, "length": 2, "data_hex": "abc"}],
            }
        ),
        400,
        "Each critical_region must have data_hex of exactly length bytes",
    ),
    (
        "/attest/upload-reference",
        raw(
            {
                "version": "1.0.0",
                "platform": "android",
                "build_hash": "h",
                "critical_regions": [{"offset": 0, "length": 1, "data_hex": "ab", "weight": 0}],
            }
        ),
        400,
        "Each critical_region weight must be a positive number",
    ),
    (
        "/attest/upload-reference",
        b'{"pad": "' + b"x" * 70_000 + b'"}',
        413,
        "Request body too large",
    ),
    ("/attest/versions", b"", 400, "Request body is empty: expected a JSON object"),
    (
        "/attest/versions",
        raw({"minimum_version": "1.0"}),
        400,
        "Invalid minimum_version: expected X.Y.Z",
    ),
    (
        "/attest/versions",
        raw({"blocked_versions": "1.0.0"}),
        400,
        "Invalid blocked_versions: expected a list of X.Y.Z versions",
    ),
    (
        "/attest/versions",
        raw({"sunset_dates": {"1.0.0": "tomorrow"}}),
        400,
        'Invalid sunset_dates: expected {"X.Y.Z": "YYYY-MM-DD"}',
    ),
    ("/attest/versions", b'{"x": "' + b"y" * 5000 + b'"}', 413, "Request body too large"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "message", "ci"),
    [*[(*row, False) for row in BAD_INPUT], *[(*row, True) for row in CI_INPUT]],
)
async def test_bad_input_gets_the_specified_4xx_and_never_a_500(
    attest, path, body, status, message, ci
):
    headers = {"Content-Type": "application/json", **(CI if ci else {})}
    with trio.fail_after(10):
        response = await _http.request(attest, "POST", path, headers=headers, body=body)
        assert_json_error(response, status, message)
        assert_common_headers(response)
        # The registry still works afterwards.
        assert (await _http.get(attest, "/attest/versions")).status == 200
