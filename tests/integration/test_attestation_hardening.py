"""The attestation registry's hardening over real HTTP (docs/protocol/attestation.md):

- new device ids are limited per client IP and hour, for web and native builds alike, while a
  known device re-registers freely;
- web devices have their own space: filling it forgets old web devices and never refuses a
  native registration;
- a reference of 1 or 2 regions is accepted and challenged whole, and a policy of only
  ``minimum_version`` is accepted;
- ``zajel attest answer`` prints a verify body the server accepts.

Every client of these tests connects from 127.0.0.1; the server trusts it as a proxy, so each
request names its client in ``X-Forwarded-For``.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import start_server
from tests.integration import _http
from tests.integration.test_attestation_http import (
    ATTESTATION_PUBLIC_KEY,
    BINARY,
    CI,
    PLATFORM,
    VERSION,
    answers,
    attestation_config,
    build_token,
    reference_body,
    upload,
)
from tests.integration.test_http import assert_json_error
from zajel.attestation import region_hmacs, verify_session_token
from zajel.cli import main
from zajel.clock import epoch_ms
from zajel.services import attestation as attestation_service

PER_IP = 5
TOO_MANY_NEW = "Too many new devices registered from this address. Try again later."
FULL = "Device registry full"


def proxied_config(**overrides: Any):
    values: dict[str, Any] = {
        "trust_proxy": "X-Forwarded-For",
        "trusted_proxies": (ipaddress.ip_network("127.0.0.1/32"),),
        "attest_registrations_per_ip_per_hour": PER_IP,
    }
    values.update(overrides)
    return attestation_config(**values)


async def register_from(
    url: str, ip: str, device_id: str, *, platform: str = PLATFORM, version: str = VERSION
) -> _http.HttpResponse:
    body = {"device_id": device_id, "build_token": build_token(version, platform=platform)}
    return await _http.post(url, "/attest/register", body, headers={"X-Forwarded-For": ip})


async def attestation_stats(url: str) -> dict[str, int]:
    stats: dict[str, int] = (await _http.get(url, "/stats")).json()["attestation"]
    return stats


# -- item 12: registrations per client IP -------------------------------------------------------


async def test_new_device_ids_from_one_ip_stop_at_the_limit_while_another_ip_registers(nursery):
    running = await start_server(nursery, proxied_config())
    url = running.url
    with trio.fail_after(30):
        # Web and native builds share the address's allowance of new device ids.
        for i in range(PER_IP):
            platform = "web" if i % 2 else PLATFORM
            response = await register_from(url, "203.0.113.7", f"dev-{i}", platform=platform)
            assert response.status == 200, (i, response.body)
        for platform in ("web", PLATFORM):
            refused = await register_from(
                url, "203.0.113.7", f"one-more-{platform}", platform=platform
            )
            assert_json_error(refused, 429, TOO_MANY_NEW)
        # Another address has its own allowance.
        for i in range(PER_IP):
            assert (await register_from(url, "198.51.100.9", f"other-{i}")).status == 200
        # An IPv6 client counts by its /64: two addresses in one /64 share one allowance.
        for i in range(PER_IP):
            ip = f"2001:db8:1:2::{i + 1:x}"
            assert (await register_from(url, ip, f"v6-{i}", platform="web")).status == 200
        assert_json_error(
            await register_from(url, "2001:db8:1:2::ff", "v6-more", platform="web"),
            429,
            TOO_MANY_NEW,
        )
        assert (await register_from(url, "2001:db8:1:3::1", "v6-next-64")).status == 200
        stats = await attestation_stats(url)
    # Refused registrations stored nothing.
    assert stats["devices"] == 3 * PER_IP + 1


async def test_a_known_device_re_registers_whatever_the_limit(nursery):
    running = await start_server(nursery, proxied_config())
    url = running.url
    with trio.fail_after(30):
        for i in range(PER_IP):
            assert (await register_from(url, "203.0.113.7", f"dev-{i}")).status == 200
        assert_json_error(await register_from(url, "203.0.113.7", "new"), 429, TOO_MANY_NEW)
        # Native devices sharing one build token re-register as often as they like, from the
        # same address, from another one, and with a newer build.
        for _ in range(3):
            for i in range(PER_IP):
                again = await register_from(url, "203.0.113.7", f"dev-{i}")
                assert again.status == 200, again.body
        moved = await register_from(url, "192.0.2.44", "dev-0", version="1.3.0")
        assert moved.status == 200
        assert moved.json()["device"]["build_version"] == "1.3.0"
        # A device known as native may become web (and back) without counting as new.
        assert (await register_from(url, "203.0.113.7", "dev-1", platform="web")).status == 200
        assert (await register_from(url, "203.0.113.7", "dev-1")).status == 200
        # The full flow still works for a re-registered device.
        assert (await upload(url, reference_body())).status == 200
        issued = await _http.post(
            url, "/attest/challenge", {"device_id": "dev-2", "build_version": VERSION}
        )
        assert issued.status == 200
        body = {"device_id": "dev-2", "nonce": issued.json()["nonce"]}
        verified = await _http.post(
            url, "/attest/verify", {**body, "responses": answers(issued.json())}
        )
    assert verified.json()["valid"] is True


# -- item 12: web devices apart from native ones ------------------------------------------------


async def test_web_devices_filling_their_space_never_refuse_a_native_registration(
    nursery, monkeypatch: pytest.MonkeyPatch
):
    native_max, web_max = 4, 3
    monkeypatch.setattr(attestation_service, "MAX_DEVICES", native_max)
    config = proxied_config(
        attest_registrations_per_ip_per_hour=1000, attest_web_devices_max=web_max
    )
    running = await start_server(nursery, config)
    url = running.url
    with trio.fail_after(30):
        for i in range(20):
            web = await register_from(url, f"203.0.113.{i}", f"browser-{i}", platform="web")
            assert web.status == 200, (i, web.body)
            assert web.json()["attestation_mode"] == "web_fallback"
        # Only the most recently seen web devices are kept.
        assert (await attestation_stats(url))["devices"] == web_max
        for i in range(native_max):
            native = await register_from(url, "198.51.100.1", f"phone-{i}")
            assert native.status == 200, (i, native.body)
        # The native space has its own cap, which web devices never took from.
        assert_json_error(await register_from(url, "198.51.100.1", "phone-extra"), 503, FULL)
        # Web registrations go on while the native space is full.
        late = await register_from(url, "203.0.113.99", "browser-late", platform="web")
        assert late.status == 200
        claims = verify_session_token(
            late.json()["session_token"], ATTESTATION_PUBLIC_KEY, now_ms=epoch_ms()
        )
        assert claims.trust_level == "web_fallback"
        # A web device may not become native while the native space is full.
        assert_json_error(await register_from(url, "203.0.113.99", "browser-late"), 503, FULL)
        stats = await attestation_stats(url)
    assert stats["devices"] == native_max + web_max


# -- item 14: small references and a partial policy --------------------------------------------


@pytest.mark.parametrize("count", [1, 2])
async def test_a_reference_of_one_or_two_regions_is_accepted_and_challenged_whole(nursery, count):
    running = await start_server(nursery, proxied_config())
    url = running.url
    reference = reference_body()
    reference["critical_regions"] = reference["critical_regions"][:count]
    with trio.fail_after(30):
        uploaded = await upload(url, reference)
        assert uploaded.status == 200, uploaded.body
        assert len(uploaded.json()["reference"]["critical_regions"]) == count
        assert (await register_from(url, "203.0.113.7", "device-1")).status == 200
        places = sorted((r["offset"], r["length"]) for r in reference["critical_regions"])
        for _ in range(3):
            issued = await _http.post(
                url, "/attest/challenge", {"device_id": "device-1", "build_version": VERSION}
            )
            assert issued.status == 200, issued.body
            challenge = issued.json()
            assert sorted((r["offset"], r["length"]) for r in challenge["regions"]) == places
            assert [r["index"] for r in challenge["regions"]] == list(range(count))
            body = {"device_id": "device-1", "nonce": challenge["nonce"]}
            verified = await _http.post(
                url, "/attest/verify", {**body, "responses": answers(challenge)}
            )
            assert verified.json()["valid"] is True


async def test_a_policy_of_only_a_minimum_version_is_accepted(nursery):
    running = await start_server(nursery, proxied_config())
    url = running.url
    with trio.fail_after(30):
        response = await _http.post(
            url, "/attest/versions", {"minimum_version": "1.1.0"}, headers=CI
        )
        assert response.status == 200, response.body
        policy = {
            "minimum_version": "1.1.0",
            "recommended_version": "1.0.0",
            "blocked_versions": [],
            "sunset_dates": {},
        }
        assert response.json() == {"success": True, "policy": policy}
        assert (await _http.get(url, "/attest/versions")).json() == policy
        # The minimum is checked first, so the lower recommended version is harmless.
        current = await register_from(url, "203.0.113.7", "device-1", version="1.1.0")
        assert current.status == 200
        assert current.json()["version_status"] == "current"
        assert "recommended_version" not in current.json()
        below = await register_from(url, "203.0.113.7", "device-2", version="1.0.9")
        assert_json_error(below, 403, "Version 1.0.9 is below minimum required version 1.1.0")


# -- item 17: zajel attest answer ---------------------------------------------------------------


async def test_zajel_attest_answer_prints_a_verify_body_the_server_accepts(
    nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    running = await start_server(nursery, proxied_config())
    url = running.url
    binary = tmp_path / "app-release.bin"
    binary.write_bytes(BINARY)
    with trio.fail_after(30):
        assert (await upload(url, reference_body())).status == 200
        assert (await register_from(url, "203.0.113.7", "pixel-7a-4f2c")).status == 200
        issued = await _http.post(
            url, "/attest/challenge", {"device_id": "pixel-7a-4f2c", "build_version": VERSION}
        )
        assert issued.status == 200
        challenge_file = tmp_path / "challenge.json"
        challenge_file.write_bytes(issued.body)  # the reply exactly as the server sent it
        status = main(
            [
                "attest",
                "answer",
                str(binary),
                "--device-id",
                "pixel-7a-4f2c",
                "--challenge",
                str(challenge_file),
            ]
        )
        out, err = capsys.readouterr()
        assert (status, err) == (0, "")
        body = json.loads(out)
        challenge = issued.json()
        places = [(r["offset"], r["length"]) for r in challenge["regions"]]
        assert body == {
            "device_id": "pixel-7a-4f2c",
            "nonce": challenge["nonce"],
            "responses": [
                {"region_index": r["index"], "hmac": h}
                for r, h in zip(
                    challenge["regions"],
                    region_hmacs(BINARY, challenge["nonce"], places),
                    strict=True,
                )
            ],
        }
        verified = await _http.request(url, "POST", "/attest/verify", body=out.encode("utf-8"))
    assert verified.status == 200
    assert verified.json()["valid"] is True
    claims = verify_session_token(
        verified.json()["session_token"], ATTESTATION_PUBLIC_KEY, now_ms=epoch_ms()
    )
    assert (claims.device_id, claims.trust_level) == ("pixel-7a-4f2c", "attested")
