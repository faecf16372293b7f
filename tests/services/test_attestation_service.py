"""The durable ``AttestationRegistry`` (docs/protocol/attestation.md) under trio's mock clock, on a
``MemoryStore``: build-token signatures, signed session tokens, the sweep, and a restart."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random

import pytest
import trio

from zajel import crypto
from zajel.attestation import (
    ExpiredToken,
    InvalidToken,
    SessionClaims,
    sign_build_token,
    verify_session_token,
)
from zajel.clock import WallClock
from zajel.config import Config, ConfigError
from zajel.protocol import errors
from zajel.protocol.attestation import (
    Policy,
    Reference,
    Region,
    RegisterDevice,
    RequestChallenge,
    UploadReference,
    VerifyChallenge,
)
from zajel.protocol.errors import ProtocolError
from zajel.services import StoreFailure
from zajel.services._durable import start_durable_service
from zajel.services.attestation import (
    SWEEP_INTERVAL_S,
    AttestationRegistry,
    AttestationState,
    GetAttestationStats,
    GetPolicy,
    Issued,
    PolicySet,
    ReferenceStored,
    Registered,
    Verified,
)
from zajel.storage import MemoryStore

SESSION_SEED = bytes(range(32))  # ZAJEL_ATTESTATION_SIGNING_KEY
PIPELINE_SEED = bytes(range(100, 132))  # the release pipeline's build-token key
STRANGER_SEED = bytes(range(200, 232))
SESSION_PUBLIC_KEY = crypto.public_key_b64(crypto.signing_key(SESSION_SEED))
PIPELINE_PUBLIC_KEY = crypto.public_key_b64(crypto.signing_key(PIPELINE_SEED))

VERSION = "1.2.3"
PLATFORM = "android"
DEVICE = "device-1"
HOUR_MS = 3_600_000
WEB_SESSION_MS = 15 * 60_000
REGIONS = tuple(
    Region(4096 * i, 32, bytes(range(32 * i, 32 * i + 32)).hex(), 1.0 + i) for i in range(6)
)


def registry(
    *, build_token_key: bool = True, wall_clock: WallClock | None = None
) -> AttestationRegistry:
    return AttestationRegistry(
        AttestationState(rng=random.Random(7)),
        crypto.signing_key(SESSION_SEED),
        crypto.signing_key(PIPELINE_SEED).verify_key if build_token_key else None,
        wall_clock=wall_clock,
    )


async def started(nursery, store, service=None):
    service = service or registry()
    return service, await start_durable_service(nursery, service, store)


def now_ms(service: AttestationRegistry) -> int:
    return service._epoch_ms(trio.current_time())


def register_request(
    service: AttestationRegistry,
    device_id: str = DEVICE,
    *,
    platform: str = PLATFORM,
    seed: bytes = PIPELINE_SEED,
    age_ms: int = 0,
) -> RegisterDevice:
    token = sign_build_token(
        seed,
        version=VERSION,
        platform=platform,
        build_hash="sha256-genuine",
        timestamp_ms=now_ms(service) - age_ms,
    )
    return RegisterDevice(device_id, token["payload"], token["signature"])


def answers(issued: Issued) -> tuple[tuple[int, str], ...]:
    by_place = {(r.offset, r.length): r.data for r in REGIONS}
    key = bytes.fromhex(issued.nonce)
    return tuple(
        (index, hmac.new(key, by_place[offset, length], hashlib.sha256).hexdigest())
        for index, offset, length in issued.regions
    )


async def register_and_upload(address, service) -> None:
    assert isinstance(await address.call(register_request(service)), Registered)
    stored = await address.call(UploadReference(VERSION, PLATFORM, "sha256-genuine", 0, REGIONS))
    assert isinstance(stored, ReferenceStored)


async def test_a_build_token_signed_by_the_pipeline_registers(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        reply = await address.call(register_request(service))
        assert isinstance(reply, Registered)
        assert reply.device.device_id == DEVICE
        assert reply.device.build_version == VERSION
        assert reply.device.registered_at == now_ms(service)
        assert (reply.version_status, reply.recommended_version) == ("current", None)
        assert reply.session_token is None  # native devices earn their token by a challenge
        assert store.devices == {DEVICE: reply.device}
        nursery.cancel_scope.cancel()


async def test_the_service_clock_judges_the_token_age(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        month_ms = 30 * 24 * HOUR_MS
        old = await address.call(register_request(service, age_ms=month_ms + 1))
        assert old == ProtocolError(errors.FORBIDDEN, "Build token expired")
        future = await address.call(register_request(service, age_ms=-60_001))
        assert future == ProtocolError(errors.FORBIDDEN, "Build token has a future timestamp")
        assert store.devices == {}
        nursery.cancel_scope.cancel()


async def test_a_build_token_signed_by_another_key_is_refused(autojump_clock, caplog):
    caplog.set_level(logging.WARNING, logger="zajel.attestation")
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        reply = await address.call(register_request(service, seed=STRANGER_SEED))
        assert reply == ProtocolError(errors.FORBIDDEN, "Invalid build token signature")
        # The signature of a genuine token over another payload is refused just as well.
        genuine = register_request(service)
        forged = RegisterDevice(
            DEVICE, genuine.payload.replace(VERSION, "9.9.9"), genuine.signature
        )
        reply = await address.call(forged)
        assert reply == ProtocolError(errors.FORBIDDEN, "Invalid build token signature")
        reply = await address.call(RegisterDevice(DEVICE, genuine.payload, "not base64!"))
        assert reply == ProtocolError(errors.FORBIDDEN, "Invalid build token signature")
        assert store.devices == {}
        assert "invalid build token signature" in caplog.text
        nursery.cancel_scope.cancel()


async def test_without_a_build_token_key_registration_is_not_configured(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store, registry(build_token_key=False))
        reply = await address.call(register_request(service))
        assert reply == ProtocolError(
            errors.NOT_CONFIGURED, "Build token verification not configured"
        )
        assert store.devices == {}
        nursery.cancel_scope.cancel()


async def test_register_challenge_verify_earns_a_session_token(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        await register_and_upload(address, service)
        assert set(store.references) == {(VERSION, PLATFORM)}
        await trio.sleep(10)
        issued = await address.call(RequestChallenge(DEVICE, VERSION))
        assert isinstance(issued, Issued)
        assert set(store.challenges) == {issued.nonce}
        await trio.sleep(20)
        reply = await address.call(VerifyChallenge(DEVICE, issued.nonce, answers(issued)))
        assert isinstance(reply, Verified)
        assert reply.error is None
        issued_at = now_ms(service)
        assert reply.session == {
            "device_id": DEVICE,
            "build_version": VERSION,
            "platform": PLATFORM,
            "issued_at": issued_at,
            "expires_at": issued_at + HOUR_MS,
        }
        claims = verify_session_token(reply.session_token, SESSION_PUBLIC_KEY, now_ms=issued_at)
        assert claims == SessionClaims(
            DEVICE, VERSION, PLATFORM, issued_at, issued_at + HOUR_MS, "attested"
        )
        assert claims.expires_at - claims.issued_at == 3_600_000
        # The token is exactly the signed claims, and no other key verifies it.
        payload = crypto.b64url_decode(reply.session_token.split(".")[0])
        assert json.loads(payload) == reply.session
        with pytest.raises(InvalidToken, match="signature"):
            verify_session_token(reply.session_token, PIPELINE_PUBLIC_KEY, now_ms=issued_at)
        with pytest.raises(ExpiredToken):
            verify_session_token(
                reply.session_token, SESSION_PUBLIC_KEY, now_ms=issued_at + HOUR_MS
            )
        # The nonce is used up, in the store too, and the device was seen.
        assert store.challenges == {}
        assert store.devices[DEVICE].last_seen == issued_at
        again = await address.call(VerifyChallenge(DEVICE, issued.nonce, answers(issued)))
        assert again == ProtocolError(errors.FORBIDDEN, "Invalid or expired nonce")
        nursery.cancel_scope.cancel()


async def test_wrong_answers_earn_no_token(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        await register_and_upload(address, service)
        issued = await address.call(RequestChallenge(DEVICE, VERSION))
        right = answers(issued)
        repeated = tuple(right[0] for _ in right)
        reply = await address.call(VerifyChallenge(DEVICE, issued.nonce, repeated))
        assert reply == Verified(None, "Verification failed")
        assert reply.session_token is None
        assert store.challenges == {}
        nursery.cancel_scope.cancel()


async def test_a_web_registration_gets_a_15_minute_web_fallback_token(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        await trio.sleep(3)
        reply = await address.call(register_request(service, "browser-1", platform="web"))
        assert isinstance(reply, Registered)
        issued_at = now_ms(service)
        claims = verify_session_token(reply.session_token, SESSION_PUBLIC_KEY, now_ms=issued_at)
        assert claims == SessionClaims(
            "browser-1", VERSION, "web", issued_at, issued_at + WEB_SESSION_MS, "web_fallback"
        )
        assert claims.expires_at - claims.issued_at == 15 * 60 * 1000
        assert store.devices["browser-1"].web_registrations == (issued_at,)
        # No binary to prove: a web device is never challenged.
        refused = await address.call(RequestChallenge("browser-1", VERSION))
        assert refused == ProtocolError(
            errors.INVALID_FIELD,
            "Binary attestation not available for web platform. Use registration token.",
        )
        nursery.cancel_scope.cancel()


async def test_the_sweep_deletes_the_expired_nonce_from_the_store(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        await register_and_upload(address, service)
        await trio.sleep(1)
        expired = await address.call(RequestChallenge(DEVICE, VERSION))
        # The first sweep runs 5 minutes after the start, when the nonce is not yet 5 minutes
        # old; the one after it finds it past its life.
        await trio.sleep(SWEEP_INTERVAL_S)
        fresh = await address.call(RequestChallenge(DEVICE, VERSION))
        assert set(store.challenges) == {expired.nonce, fresh.nonce}
        await trio.sleep(SWEEP_INTERVAL_S)  # 10:01 after the start: the second sweep has run
        assert set(store.challenges) == {fresh.nonce}
        assert await address.call(GetAttestationStats()) == {
            "devices": 1,
            "references": 1,
            "openChallenges": 1,
            "flaggedDevices": 0,
        }
        late = await address.call(VerifyChallenge(DEVICE, expired.nonce, answers(expired)))
        assert late == ProtocolError(errors.FORBIDDEN, "Invalid or expired nonce")
        nursery.cancel_scope.cancel()


async def test_the_first_sweep_deletes_a_nonce_loaded_from_before_the_start(autojump_clock):
    # A nonce issued more than 5 minutes before the sweep (here: before a restart) is gone
    # from the store after the first sweep, 5 minutes (and a second) after the start.
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        await register_and_upload(address, service)
        issued = await address.call(RequestChallenge(DEVICE, VERSION))
        nursery.cancel_scope.cancel()
    challenge = store.challenges[issued.nonce]
    # The second start is a second after the challenge, whatever trio's clock says.
    restart = WallClock(challenge.created_at + 1000, trio.current_time(), follows_wall_clock=False)
    async with trio.open_nursery() as nursery:
        await started(nursery, store, registry(wall_clock=restart))
        await trio.sleep(SWEEP_INTERVAL_S - 1)
        assert set(store.challenges) == {issued.nonce}
        await trio.sleep(2)  # the sweep at 5:00 found it 5:01 old
        assert store.challenges == {}
        nursery.cancel_scope.cancel()


async def test_everything_comes_back_after_a_restart(autojump_clock):
    store = MemoryStore()
    policy = Policy("1.0.0", "1.3.0", ("1.1.0",), (("1.0.0", "2030-01-01"),))
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        await register_and_upload(address, service)
        assert await address.call(policy) == PolicySet(policy)
        assert store.policy == policy
        open_nonces = [await address.call(RequestChallenge(DEVICE, VERSION)) for _ in range(5)]
        before = store.devices[DEVICE]
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        assert service.state.devices == {DEVICE: before}
        assert service.state.references[VERSION, PLATFORM] == Reference(
            VERSION,
            PLATFORM,
            "sha256-genuine",
            0,
            REGIONS,
            before.registered_at,
        )
        assert set(service.state.challenges) == {issued.nonce for issued in open_nonces}
        assert await address.call(GetPolicy()) == policy
        # Five are still open: a sixth waits for one of them.
        sixth = await address.call(RequestChallenge(DEVICE, VERSION))
        assert sixth.code == errors.TOO_MANY
        issued = open_nonces[2]
        reply = await address.call(VerifyChallenge(DEVICE, issued.nonce, answers(issued)))
        assert isinstance(reply, Verified)
        claims = verify_session_token(
            reply.session_token, SESSION_PUBLIC_KEY, now_ms=now_ms(service)
        )
        assert (claims.device_id, claims.trust_level) == (DEVICE, "attested")
        assert issued.nonce not in store.challenges
        assert len(store.challenges) == 4
        nursery.cancel_scope.cancel()


async def test_a_policy_set_through_the_service_is_enforced(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        await register_and_upload(address, service)
        assert await address.call(GetPolicy()) == Policy()
        issued = await address.call(RequestChallenge(DEVICE, VERSION))
        blocked = Policy(blocked_versions=(VERSION,))
        assert await address.call(blocked) == PolicySet(blocked)
        reply = await address.call(VerifyChallenge(DEVICE, issued.nonce, answers(issued)))
        assert reply == ProtocolError(errors.FORBIDDEN, f"Version {VERSION} has been blocked")
        assert store.challenges == {}
        again = await address.call(register_request(service))
        assert again == ProtocolError(errors.FORBIDDEN, f"Version {VERSION} has been blocked")
        nursery.cancel_scope.cancel()


async def test_a_failed_commit_answers_store_failure_and_keeps_nothing(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        await register_and_upload(address, service)
        store.fail = True
        failed = await address.call(RequestChallenge(DEVICE, VERSION))
        assert failed == StoreFailure("attestation")
        assert store.challenges == {}
        store.fail = False
        # The next batch reloads the state first: the failed challenge was never opened.
        for _ in range(5):
            assert isinstance(await address.call(RequestChallenge(DEVICE, VERSION)), Issued)
        assert len(store.challenges) == 5
        sixth = await address.call(RequestChallenge(DEVICE, VERSION))
        assert sixth.code == errors.TOO_MANY
        nursery.cancel_scope.cancel()


# -- from_config -------------------------------------------------------------------------------


def test_development_without_a_key_makes_an_ephemeral_one_and_logs_it(caplog):
    caplog.set_level(logging.WARNING, logger="zajel.attestation")
    first = AttestationRegistry.from_config(Config(env="development"))
    second = AttestationRegistry.from_config(Config(env="development"))
    assert first.signing_key.verify_key != second.signing_key.verify_key
    public_key = crypto.public_key_b64(first.signing_key)
    assert any(getattr(r, "context", {}).get("public_key") == public_key for r in caplog.records)
    assert first.build_token_key is None


@pytest.mark.parametrize("env", ["production", "qa"])
def test_no_signing_key_outside_development_is_refused(env):
    with pytest.raises(ConfigError, match="ZAJEL_ATTESTATION_SIGNING_KEY"):
        AttestationRegistry.from_config(Config(env=env))


def test_configured_keys_are_used(caplog):
    caplog.set_level(logging.WARNING, logger="zajel.attestation")
    config = Config(
        env="production",
        attestation_signing_key=SESSION_SEED.hex(),
        build_token_verify_key=PIPELINE_PUBLIC_KEY,
    )
    service = AttestationRegistry.from_config(config)
    assert service.signing_key.verify_key == crypto.signing_key(SESSION_SEED).verify_key
    assert service.build_token_key == crypto.signing_key(PIPELINE_SEED).verify_key
    assert "ephemeral" not in caplog.text
