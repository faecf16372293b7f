"""``AttestationState`` driven directly (docs/protocol/attestation.md): explicit epoch
milliseconds, a seeded ``random.Random`` and a counting ``token_bytes``, so every nonce and every
draw is the same on each run."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import random
import re
from fractions import Fraction
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zajel.protocol import errors
from zajel.protocol.attestation import (
    BuildClaims,
    Challenge,
    Device,
    Policy,
    Reference,
    Region,
    RequestChallenge,
    UploadReference,
    VerifyChallenge,
    decode_upload_reference,
)
from zajel.protocol.errors import ProtocolError
from zajel.services.attestation import (
    AttestationState,
    Issued,
    Registered,
    Verified,
)
from zajel.storage import (
    DeleteChallenge,
    DeleteDevice,
    MemoryStore,
    PutChallenge,
    PutDevice,
    PutPolicy,
    PutReference,
)

T0 = 1_700_000_000_000  # epoch ms of the first request
SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
NONCE_TTL_MS = 5 * MINUTE_MS
SESSION_MS = HOUR_MS
WEB_SESSION_MS = 15 * MINUTE_MS
DEVICE_TTL_MS = 90 * DAY_MS
TOKEN_SKEW_MS = 60 * SECOND_MS
TOKEN_AGE_MS = 30 * DAY_MS

VERSION = "1.2.3"
PLATFORM = "android"
DEVICE = "device-1"

TOO_MANY_CHALLENGES = ProtocolError(
    errors.TOO_MANY,
    "Too many pending challenges. Please complete or wait for existing challenges to expire.",
)
TOO_MANY_WEB = ProtocolError(
    errors.TOO_MANY, "Too many web registrations for this device. Try again later."
)
NOT_REGISTERED = ProtocolError(errors.NOT_FOUND, "Device not registered")
NO_REFERENCE = ProtocolError(
    errors.NOT_FOUND, "No reference binary found for this version and platform"
)
WEB_REFUSED = ProtocolError(
    errors.INVALID_FIELD,
    "Binary attestation not available for web platform. Use registration token.",
)


def forbidden(message: str) -> ProtocolError:
    return ProtocolError(errors.FORBIDDEN, message)


class CountingNonces:
    """A deterministic ``token_bytes``: 1, 2, 3, ... as big-endian bytes of the asked length."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, size: int) -> bytes:
        self.count += 1
        return self.count.to_bytes(size, "big")


def new_state(*, seed: int = 1234, **options: Any) -> AttestationState:
    return AttestationState(rng=random.Random(seed), token_bytes=CountingNonces(), **options)


def region(offset: int, data: bytes, weight: float = 1.0) -> Region:
    return Region(offset, len(data), data.hex(), weight)


# Eight regions of 16 distinct bytes each: no two regions share offset or content.
REGIONS = tuple(region(1000 * i, bytes(range(16 * i, 16 * i + 16))) for i in range(8))


def claims(
    version: str = VERSION,
    platform: str = PLATFORM,
    *,
    timestamp: int = T0,
    build_hash: str = "sha256-build",
) -> BuildClaims:
    return BuildClaims(version, platform, build_hash, timestamp)


def upload(
    state: AttestationState,
    regions: tuple[Region, ...] = REGIONS,
    *,
    version: str = VERSION,
    platform: str = PLATFORM,
    now: int = T0,
) -> Reference:
    reference, writes = state.upload_reference(
        UploadReference(version, platform, "sha256-build", 0, regions), now
    )
    assert writes == [PutReference(reference)]
    return reference


def registered(
    state: AttestationState,
    device_id: str = DEVICE,
    *,
    now: int = T0,
    version: str = VERSION,
    platform: str = PLATFORM,
) -> Device:
    reply, writes = state.register(device_id, claims(version, platform, timestamp=now), now)
    assert isinstance(reply, Registered), reply
    assert writes == [PutDevice(reply.device)]
    return reply.device


def ready(state: AttestationState, device_id: str = DEVICE, *, now: int = T0) -> None:
    """A registered native device and the reference of its build."""
    upload(state, now=now)
    registered(state, device_id, now=now)


def issue(
    state: AttestationState, device_id: str = DEVICE, *, now: int = T0, version: str = VERSION
) -> Issued:
    reply, _ = state.challenge(RequestChallenge(device_id, version), now)
    assert isinstance(reply, Issued), reply
    return reply


def expected_hmac(nonce: str, data: bytes) -> str:
    return hmac.new(bytes.fromhex(nonce), data, hashlib.sha256).hexdigest()


def answers(issued: Issued, regions: tuple[Region, ...] = REGIONS) -> tuple[tuple[int, str], ...]:
    """The right answer to every challenged region, computed from the genuine bytes."""
    by_place = {(r.offset, r.length): r.data for r in regions}
    return tuple(
        (index, expected_hmac(issued.nonce, by_place[offset, length]))
        for index, offset, length in issued.regions
    )


def verify(
    state: AttestationState,
    issued: Issued,
    responses: tuple[tuple[int, str], ...] | None = None,
    *,
    device_id: str = DEVICE,
    now: int = T0,
) -> tuple[Any, list[Any]]:
    if responses is None:
        responses = answers(issued)
    return state.verify(VerifyChallenge(device_id, issued.nonce, responses), now)


def utc_ms(year: int, month: int, day: int) -> int:
    moment = datetime.datetime(year, month, day, tzinfo=datetime.UTC)
    return int(moment.timestamp()) * 1000


# -- register ----------------------------------------------------------------------------------


def test_register_a_native_device():
    state = new_state()
    reply, writes = state.register(DEVICE, claims(), T0)
    device = Device(DEVICE, VERSION, PLATFORM, "sha256-build", T0, T0)
    assert reply == Registered(device, "current", None)
    assert reply.session is None
    assert reply.session_token is None
    assert writes == [PutDevice(device)]
    assert state.devices == {DEVICE: device}


@pytest.mark.parametrize(
    ("skew_ms", "refused"),
    [(TOKEN_SKEW_MS + 1, True), (TOKEN_SKEW_MS, False), (0, False)],
)
def test_a_build_token_at_most_60_s_ahead_is_accepted(skew_ms, refused):
    state = new_state()
    reply, writes = state.register(DEVICE, claims(timestamp=T0 + skew_ms), T0)
    if refused:
        assert reply == forbidden("Build token has a future timestamp")
        assert writes == []
        assert state.devices == {}
    else:
        assert isinstance(reply, Registered)
        assert writes == [PutDevice(reply.device)]


@pytest.mark.parametrize(
    ("age_ms", "refused"), [(TOKEN_AGE_MS + 1, True), (TOKEN_AGE_MS, False), (1, False)]
)
def test_a_build_token_at_most_30_days_old_is_accepted(age_ms, refused):
    state = new_state()
    reply, writes = state.register(DEVICE, claims(timestamp=T0 - age_ms), T0)
    if refused:
        assert reply == forbidden("Build token expired")
        assert writes == []
        assert state.devices == {}
    else:
        assert isinstance(reply, Registered)
        assert reply.device.registered_at == T0  # the time of registration, not of the build


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (Policy(blocked_versions=("0.9.0", VERSION)), f"Version {VERSION} has been blocked"),
        (
            Policy(minimum_version="1.10.0", recommended_version="1.10.0"),
            f"Version {VERSION} is below minimum required version 1.10.0",
        ),
        (
            Policy(minimum_version="2.0.0", recommended_version="2.0.0"),
            f"Version {VERSION} is below minimum required version 2.0.0",
        ),
    ],
)
def test_register_refuses_what_the_policy_refuses(policy, message):
    state = new_state()
    assert state.set_policy(policy) == [PutPolicy(policy)]
    reply, writes = state.register(DEVICE, claims(), T0)
    assert reply == forbidden(message)
    assert writes == []
    assert state.devices == {}


def test_a_sunset_date_applies_from_0000_utc_of_that_day():
    sunset = utc_ms(2024, 3, 1)
    state = new_state()
    state.set_policy(Policy(sunset_dates=(("1.0.0", "2020-01-01"), (VERSION, "2024-03-01"))))
    refusal = forbidden(f"Version {VERSION} reached its sunset date 2024-03-01")
    for now in (sunset - DAY_MS, sunset - 1):  # the day before is fine, to its last ms
        reply, _ = state.register(DEVICE, claims(timestamp=now), now)
        assert isinstance(reply, Registered), now
    for now in (sunset, sunset + 1, sunset + DAY_MS, sunset + 400 * DAY_MS):
        reply, writes = state.register(DEVICE, claims(timestamp=now), now)
        assert (reply, writes) == (refusal, []), now
    # Another version is not affected by this version's sunset.
    reply, _ = state.register("other", claims("1.2.4", timestamp=sunset), sunset)
    assert isinstance(reply, Registered)


@pytest.mark.parametrize(
    ("recommended", "status", "shown"),
    [
        ("1.3.0", "update_recommended", "1.3.0"),
        ("1.2.4", "update_recommended", "1.2.4"),
        ("1.10.0", "update_recommended", "1.10.0"),  # numerically, not as text
        (VERSION, "current", None),
        ("1.2.0", "current", None),
    ],
)
def test_version_status_against_the_recommended_version(recommended, status, shown):
    state = new_state()
    state.set_policy(Policy(minimum_version="1.0.0", recommended_version=recommended))
    reply, _ = state.register(DEVICE, claims(), T0)
    assert isinstance(reply, Registered)
    assert (reply.version_status, reply.recommended_version) == (status, shown)


def test_re_registration_keeps_anomaly_flags_and_challenge_history():
    state = new_state()
    ready(state)
    for i in range(11):  # a flood: 11 challenges within a minute
        issued = issue(state, now=T0 + i)
        assert isinstance(verify(state, issued, now=T0 + i)[0], Verified)
    before = state.devices[DEVICE]
    assert before.anomaly_flags == ("challenge_flood",)
    later = T0 + HOUR_MS
    reply, writes = state.register(DEVICE, claims(build_hash="rebuilt", timestamp=later), later)
    assert isinstance(reply, Registered)
    assert reply.device == Device(
        DEVICE,
        VERSION,
        PLATFORM,
        "rebuilt",
        registered_at=later,
        last_seen=later,
        anomaly_flags=("challenge_flood",),
        challenge_times=tuple(T0 + i for i in range(11)),
    )
    assert writes == [PutDevice(reply.device)]
    assert reply.device.to_json()["anomaly_flags"] == ["challenge_flood"]


def test_the_device_cap_refuses_a_new_device_and_lets_a_known_one_re_register():
    state = new_state(max_devices=3)
    for name in ("a", "b", "c"):
        registered(state, name)
    full = ProtocolError(errors.REGISTRY_FULL, "Device registry full")
    assert state.register("d", claims(), T0 + 1) == (full, [])
    # Web devices have a space of their own.
    assert isinstance(state.register("web-d", claims(platform="web"), T0 + 1)[0], Registered)
    reply, writes = state.register("b", claims("1.3.0"), T0 + 2)
    assert isinstance(reply, Registered)
    assert reply.device.build_version == "1.3.0"
    assert writes == [PutDevice(reply.device)]
    assert sorted(state.devices) == ["a", "b", "c", "web-d"]


def test_a_swept_device_makes_room_under_the_cap():
    state = new_state(max_devices=2)
    registered(state, "old")
    registered(state, "young", now=T0 + DAY_MS)
    later = T0 + DEVICE_TTL_MS + 1
    assert state.sweep(later) == [DeleteDevice("old")]
    reply, _ = state.register("new", claims(timestamp=later), later)
    assert isinstance(reply, Registered)


def test_a_web_registration_gets_a_15_minute_web_fallback_session():
    state = new_state()
    reply, writes = state.register("browser-1", claims(platform="web"), T0)
    assert isinstance(reply, Registered)
    assert reply.session == {
        "device_id": "browser-1",
        "build_version": VERSION,
        "platform": "web",
        "issued_at": T0,
        "expires_at": T0 + WEB_SESSION_MS,
        "trust_level": "web_fallback",
    }
    assert list(reply.session) == [
        "device_id",
        "build_version",
        "platform",
        "issued_at",
        "expires_at",
        "trust_level",
    ]
    assert reply.session_token is None  # the service signs it
    assert reply.device.web_registrations == (T0,)
    assert writes == [PutDevice(reply.device)]


def test_ten_web_registrations_an_hour():
    state = new_state()
    for i in range(10):
        now = T0 + i * MINUTE_MS
        reply, _ = state.register("browser", claims(platform="web"), now)
        assert isinstance(reply, Registered), i
    assert state.register("browser", claims(platform="web"), T0 + 10 * MINUTE_MS) == (
        TOO_MANY_WEB,
        [],
    )
    assert state.register("browser", claims(platform="web"), T0 + HOUR_MS - 1) == (
        TOO_MANY_WEB,
        [],
    )
    # Another device has its own allowance.
    assert isinstance(state.register("other", claims(platform="web"), T0)[0], Registered)
    # The first is an hour old: one more is allowed, and the record keeps the last hour only.
    reply, writes = state.register("browser", claims(platform="web"), T0 + HOUR_MS)
    assert isinstance(reply, Registered)
    expected_times = (*(T0 + i * MINUTE_MS for i in range(1, 10)), T0 + HOUR_MS)
    assert reply.device.web_registrations == expected_times
    assert writes == [PutDevice(reply.device)]
    # Ten again in the last hour: refused until the next one is an hour old.
    assert state.register("browser", claims(platform="web"), T0 + HOUR_MS + 1) == (
        TOO_MANY_WEB,
        [],
    )
    after = T0 + HOUR_MS + MINUTE_MS
    assert isinstance(state.register("browser", claims(platform="web"), after)[0], Registered)


# -- challenge ---------------------------------------------------------------------------------


def test_a_challenge_for_an_unregistered_device():
    state = new_state()
    upload(state)
    assert state.challenge(RequestChallenge("ghost", VERSION), T0) == (NOT_REGISTERED, [])
    assert state.challenges == {}


def test_a_web_device_cannot_be_challenged():
    state = new_state()
    upload(state, platform="web")
    registered(state, "browser", platform="web")
    assert state.challenge(RequestChallenge("browser", VERSION), T0) == (WEB_REFUSED, [])
    assert state.challenges == {}


def test_a_challenge_for_another_version_than_registered():
    state = new_state()
    ready(state)
    upload(state, version="1.3.0")
    reply, writes = state.challenge(RequestChallenge(DEVICE, "1.3.0"), T0 + 5)
    assert reply == forbidden("Build version does not match registration")
    assert state.challenges == {}
    # The attempt is recorded on the device (last seen, challenge history), nothing else.
    device = state.devices[DEVICE]
    assert (device.last_seen, device.challenge_times) == (T0 + 5, (T0 + 5,))
    assert writes == [PutDevice(device)]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (Policy(blocked_versions=(VERSION,)), f"Version {VERSION} has been blocked"),
        (
            Policy(minimum_version="1.3.0", recommended_version="1.3.0"),
            f"Version {VERSION} is below minimum required version 1.3.0",
        ),
        (
            Policy(sunset_dates=((VERSION, "2023-11-14"),)),  # T0 is 2023-11-14T22:13:20Z
            f"Version {VERSION} reached its sunset date 2023-11-14",
        ),
    ],
)
def test_a_version_refused_after_registration_is_not_challenged(policy, message):
    state = new_state()
    ready(state, now=T0 - DAY_MS)
    state.set_policy(policy)
    reply, writes = state.challenge(RequestChallenge(DEVICE, VERSION), T0)
    assert reply == forbidden(message)
    assert writes == [PutDevice(state.devices[DEVICE])]
    assert state.challenges == {}


def test_a_challenge_without_a_reference():
    state = new_state()
    registered(state)
    upload(state, platform="ios")  # the same version on another platform does not count
    upload(state, version="1.2.4")
    reply, writes = state.challenge(RequestChallenge(DEVICE, VERSION), T0)
    assert reply == NO_REFERENCE
    assert writes == [PutDevice(state.devices[DEVICE])]
    assert state.challenges == {}


def test_a_challenge_is_3_to_5_distinct_regions_of_the_reference_and_a_fresh_nonce():
    state = new_state(registrations_per_ip_per_hour=1000)
    upload(state)
    places = {(r.offset, r.length) for r in REGIONS}
    sizes = set()
    nonces = set()
    for i in range(200):
        device_id = f"device-{i}"
        registered(state, device_id)
        reply, writes = state.challenge(RequestChallenge(device_id, VERSION), T0 + 7)
        assert isinstance(reply, Issued)
        assert re.fullmatch("[0-9a-f]{64}", reply.nonce)
        nonces.add(reply.nonce)
        count = len(reply.regions)
        sizes.add(count)
        assert 3 <= count <= 5
        assert [index for index, _, _ in reply.regions] == list(range(count))
        offsets = [offset for _, offset, _ in reply.regions]
        assert len(set(offsets)) == count
        assert {(offset, length) for _, offset, length in reply.regions} <= places
        challenge = Challenge(
            reply.nonce,
            device_id,
            VERSION,
            PLATFORM,
            tuple((offset, length) for _, offset, length in reply.regions),
            T0 + 7,
        )
        assert state.challenges[reply.nonce] == challenge
        assert writes == [PutDevice(state.devices[device_id]), PutChallenge(challenge)]
    assert sizes == {3, 4, 5}
    assert len(nonces) == 200


def test_the_nonce_is_the_hex_of_32_random_bytes():
    asked: list[int] = []

    def token_bytes(size: int) -> bytes:
        asked.append(size)
        return bytes(range(0xA0, 0xA0 + size))

    state = AttestationState(rng=random.Random(5), token_bytes=token_bytes)
    ready(state)
    assert issue(state).nonce == bytes(range(0xA0, 0xC0)).hex()
    assert asked == [32]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_a_reference_of_fewer_than_4_regions_is_challenged_whole(count):
    state = new_state()
    upload(state, REGIONS[:count])
    registered(state)
    for i in range(20):  # whatever 3-5 the draw asks for
        issued = issue(state, now=T0 + i)
        assert sorted((o, n) for _, o, n in issued.regions) == sorted(
            (r.offset, r.length) for r in REGIONS[:count]
        )
        assert isinstance(verify(state, issued, now=T0 + i)[0], Verified)


def test_at_most_5_open_challenges_until_one_expires():
    state = new_state()
    ready(state)
    first = issue(state, now=T0)
    for i in range(1, 5):
        issue(state, now=T0 + i * MINUTE_MS)
    assert state.challenge(RequestChallenge(DEVICE, VERSION), T0 + 4 * MINUTE_MS)[0] == (
        TOO_MANY_CHALLENGES
    )
    reply, _ = state.challenge(RequestChallenge(DEVICE, VERSION), T0 + NONCE_TTL_MS)
    assert reply == TOO_MANY_CHALLENGES  # exactly 5 minutes old is still open
    reply, writes = state.challenge(RequestChallenge(DEVICE, VERSION), T0 + NONCE_TTL_MS + 1)
    assert isinstance(reply, Issued)
    assert writes == [
        PutDevice(state.devices[DEVICE]),
        DeleteChallenge(first.nonce),
        PutChallenge(state.challenges[reply.nonce]),
    ]
    assert first.nonce not in state.challenges
    assert len(state.challenges) == 5


def test_a_used_challenge_makes_room_for_another():
    state = new_state()
    ready(state)
    issued = [issue(state, now=T0 + i) for i in range(5)]
    assert state.challenge(RequestChallenge(DEVICE, VERSION), T0 + 10)[0] == TOO_MANY_CHALLENGES
    # A failed verify uses the nonce up too.
    reply, _ = verify(state, issued[2], (), now=T0 + 11)
    assert reply == Verified(None, "Wrong number of responses")
    assert isinstance(state.challenge(RequestChallenge(DEVICE, VERSION), T0 + 12)[0], Issued)
    assert state.challenge(RequestChallenge(DEVICE, VERSION), T0 + 13)[0] == TOO_MANY_CHALLENGES
    assert isinstance(verify(state, issued[0], now=T0 + 14)[0], Verified)
    assert isinstance(state.challenge(RequestChallenge(DEVICE, VERSION), T0 + 15)[0], Issued)


def test_the_open_challenges_of_one_device_do_not_count_against_another():
    state = new_state()
    ready(state)
    registered(state, "device-2")
    for i in range(5):
        issue(state, now=T0 + i)
    for i in range(5):
        issue(state, "device-2", now=T0 + i)
    assert state.challenge(RequestChallenge(DEVICE, VERSION), T0 + 9)[0] == TOO_MANY_CHALLENGES
    registered(state, "device-3")
    assert isinstance(state.challenge(RequestChallenge("device-3", VERSION), T0 + 9)[0], Issued)


# -- weighted draws ----------------------------------------------------------------------------


def heavy_pick_chance(light: int, heavy_weight: int, draws: int) -> Fraction:
    """The chance that ``draws`` weighted draws without replacement pick the heavy region."""
    missed = Fraction(1)
    for j in range(draws):
        missed *= Fraction(light - j, light - j + heavy_weight)
    return 1 - missed


def test_regions_are_drawn_in_proportion_to_their_weight():
    heavy = region(0, b"\x01" * 8, weight=10.0)
    lights = tuple(region(100 * (i + 1), bytes([i + 2]) * 8) for i in range(9))
    state = new_state(seed=1234, registrations_per_ip_per_hour=10_000)
    upload(state, (*lights[:4], heavy, *lights[4:]))  # the heavy one is not first
    picks = {r.offset: 0 for r in (heavy, *lights)}
    challenges = 3000
    for i in range(challenges):
        device_id = f"d{i}"
        registered(state, device_id)
        issued = issue(state, device_id)
        offsets = [offset for _, offset, _ in issued.regions]
        assert len(set(offsets)) == len(offsets)  # never a region twice in one challenge
        for offset in offsets:
            picks[offset] += 1
    # Exact expectations: the draw asks for 3, 4 or 5 regions, each as likely.
    p_heavy = sum(heavy_pick_chance(9, 10, k) for k in (3, 4, 5)) / 3  # ~0.957
    p_light = (4 - p_heavy) / 9  # ~0.338; with equal weights every region would be 0.4
    heavy_rate = picks[heavy.offset] / challenges
    light_rates = [picks[r.offset] / challenges for r in lights]
    assert heavy_rate >= 0.9
    assert abs(heavy_rate - float(p_heavy)) < 0.02
    assert abs(sum(light_rates) / 9 - float(p_light)) < 0.02
    assert all(rate <= 0.45 for rate in light_rates)
    assert heavy_rate > 2.5 * max(light_rates)


def test_pick_regions_never_repeats_a_region_and_honours_tiny_weights():
    state = new_state(seed=99)
    regions = tuple(
        region(10 * i, bytes([i]) * 4, weight=w) for i, w in enumerate([1e-6, 1e6, 0.5, 3.25])
    )
    reference = Reference(VERSION, PLATFORM, "h", 0, regions, T0)
    for _ in range(500):
        picked = state._pick_regions(reference)
        assert 3 <= len(picked) <= 4
        assert len({r.offset for r in picked}) == len(picked)
        assert picked[0].weight == 1e6  # the first draw is all but certain
        assert set(picked) <= set(regions)


def test_a_place_listed_twice_in_a_reference_is_refused_at_upload():
    # docs/protocol/attestation.md, "POST /attest/challenge": 3-5 distinct regions are drawn. A
    # reference that listed the same place twice could be asked for it twice and answered with one
    # known region: the upload is refused.
    twice = {
        "version": VERSION,
        "platform": PLATFORM,
        "build_hash": "h",
        "critical_regions": [
            {"offset": 0, "length": 2, "data_hex": "abcd"},
            {"offset": 0, "length": 2, "data_hex": "abcd"},
            {"offset": 4, "length": 2, "data_hex": "abcd"},
        ],
    }
    with pytest.raises(ProtocolError) as caught:
        decode_upload_reference(json.dumps(twice).encode())
    assert caught.value == ProtocolError(
        errors.INVALID_FIELD, "Each critical_region must be a distinct offset and length"
    )


# -- verify ------------------------------------------------------------------------------------


def test_the_right_answers_verify():
    state = new_state()
    ready(state)
    issued = issue(state)
    now = T0 + 2 * MINUTE_MS
    reply, writes = verify(state, issued, now=now)
    assert reply == Verified(
        {
            "device_id": DEVICE,
            "build_version": VERSION,
            "platform": PLATFORM,
            "issued_at": now,
            "expires_at": now + SESSION_MS,
        }
    )
    assert list(reply.session) == [
        "device_id",
        "build_version",
        "platform",
        "issued_at",
        "expires_at",
    ]
    device = state.devices[DEVICE]
    assert device.last_seen == now
    assert device.challenge_times == (T0,)  # a verify is not a challenge
    assert writes == [DeleteChallenge(issued.nonce), PutDevice(device)]
    assert state.challenges == {}


def test_answers_in_any_order_verify():
    state = new_state()
    ready(state)
    issued = issue(state)
    reply, _ = verify(state, issued, tuple(reversed(answers(issued))))
    assert isinstance(reply, Verified)
    assert reply.session is not None


def used_up(state: AttestationState, issued: Issued, now: int = T0 + 100) -> bool:
    """True when the nonce can no longer be presented, even with the right answers."""
    reply, writes = verify(state, issued, now=now)
    return reply == forbidden("Invalid or expired nonce") and writes == []


def test_a_repeated_region_index_fails():
    # Hardened: one known region answered for every position must not pass.
    state = new_state()
    ready(state)
    issued = issue(state)
    right = answers(issued)
    repeated = tuple(right[0] for _ in right)
    reply, writes = verify(state, issued, repeated)
    assert reply == Verified(None, "Verification failed")
    assert writes == [DeleteChallenge(issued.nonce)]
    assert used_up(state, issued)


def test_a_repeated_index_among_right_answers_fails():
    state = new_state()
    ready(state)
    issued = issue(state)
    right = answers(issued)
    reply, _ = verify(state, issued, (*right[:-1], right[0]))
    assert reply == Verified(None, "Verification failed")


@pytest.mark.parametrize("bad_index", ["count", -1, 2**70])
def test_an_index_out_of_range_fails(bad_index):
    state = new_state()
    ready(state)
    issued = issue(state)
    right = answers(issued)
    index = len(right) if bad_index == "count" else bad_index
    reply, writes = verify(state, issued, (*right[:-1], (index, right[-1][1])))
    assert reply == Verified(None, "Verification failed")
    assert writes == [DeleteChallenge(issued.nonce)]
    assert used_up(state, issued)


@pytest.mark.parametrize("change", ["none", "one_fewer", "one_more"])
def test_the_wrong_number_of_responses_fails(change):
    state = new_state()
    ready(state)
    issued = issue(state)
    right = answers(issued)
    responses = {
        "none": (),
        "one_fewer": right[:-1],
        "one_more": (*right, (len(right), "00" * 32)),
    }[change]
    reply, writes = verify(state, issued, responses)
    assert reply == Verified(None, "Wrong number of responses")
    assert writes == [DeleteChallenge(issued.nonce)]
    assert used_up(state, issued)


def test_an_uppercase_hmac_is_a_mismatch():
    state = new_state()
    ready(state)
    issued = issue(state)
    right = answers(issued)
    upper = ((right[0][0], right[0][1].upper()), *right[1:])
    assert upper[0][1] != right[0][1]  # the digest has letters in it
    reply, writes = verify(state, issued, upper)
    assert reply == Verified(None, "HMAC mismatch")
    assert writes == [DeleteChallenge(issued.nonce)]


@pytest.mark.parametrize(
    "wrong",
    [
        "flipped",  # one hex digit changed
        "text_key",  # keyed with the nonce's hex text instead of its 32 bytes
        "other_region",  # the HMAC of another region of the binary
        "short",
        "empty",
    ],
)
def test_a_wrong_hmac_is_a_mismatch(wrong):
    state = new_state()
    ready(state)
    issued = issue(state)
    right = answers(issued)
    index, digest = right[-1]
    _, offset, length = issued.regions[index]
    data = next(r.data for r in REGIONS if (r.offset, r.length) == (offset, length))
    other = next(r.data for r in REGIONS if r.data != data)
    bad = {
        "flipped": digest[:-1] + ("0" if digest[-1] != "0" else "1"),
        "text_key": hmac.new(issued.nonce.encode(), data, hashlib.sha256).hexdigest(),
        "other_region": expected_hmac(issued.nonce, other),
        "short": digest[:32],
        "empty": "",
    }[wrong]
    reply, writes = verify(state, issued, (*right[:-1], (index, bad)))
    assert reply == Verified(None, "HMAC mismatch")
    assert writes == [DeleteChallenge(issued.nonce)]
    assert used_up(state, issued)


def test_a_nonce_is_used_once():
    state = new_state()
    ready(state)
    issued = issue(state)
    assert isinstance(verify(state, issued)[0], Verified)
    assert verify(state, issued, now=T0 + 1) == (forbidden("Invalid or expired nonce"), [])
    assert state.devices[DEVICE].last_seen == T0


def test_an_unknown_nonce_is_invalid():
    state = new_state()
    ready(state)
    issued = issue(state)
    forged = attrs.evolve(issued, nonce="ff" * 32)
    assert verify(state, forged) == (forbidden("Invalid or expired nonce"), [])
    assert issued.nonce in state.challenges


def test_a_nonce_presented_by_another_device_stays_usable_by_its_owner():
    state = new_state()
    ready(state)
    registered(state, "thief")
    issued = issue(state)
    assert verify(state, issued, device_id="thief") == (forbidden("Device ID mismatch"), [])
    assert verify(state, issued, device_id="unregistered") == (forbidden("Device ID mismatch"), [])
    assert issued.nonce in state.challenges
    reply, _ = verify(state, issued, now=T0 + 1)
    assert isinstance(reply, Verified)
    assert reply.session is not None
    assert reply.session["device_id"] == DEVICE


def test_an_expired_nonce_is_refused_and_forgotten():
    state = new_state()
    ready(state)
    issued = issue(state)
    reply, writes = verify(state, issued, now=T0 + NONCE_TTL_MS + 1)
    assert reply == forbidden("Challenge expired")
    assert writes == [DeleteChallenge(issued.nonce)]
    assert state.challenges == {}
    assert used_up(state, issued, now=T0 + NONCE_TTL_MS + 2)
    # Its slot is free again.
    assert state.statistics(T0 + NONCE_TTL_MS + 2)["openChallenges"] == 0


def test_a_nonce_exactly_5_minutes_old_still_verifies():
    state = new_state()
    ready(state)
    issued = issue(state)
    reply, _ = verify(state, issued, now=T0 + NONCE_TTL_MS)
    assert isinstance(reply, Verified)
    assert reply.session is not None


def test_a_version_blocked_between_challenge_and_verify():
    state = new_state()
    ready(state)
    issued = issue(state)
    state.set_policy(Policy(blocked_versions=(VERSION,)))
    reply, writes = verify(state, issued, now=T0 + 1)
    assert reply == forbidden(f"Version {VERSION} has been blocked")
    assert writes == [DeleteChallenge(issued.nonce)]
    state.set_policy(Policy())
    assert used_up(state, issued)


def test_a_sunset_reached_between_challenge_and_verify():
    midnight = utc_ms(2024, 3, 1)
    state = new_state()
    ready(state, now=midnight - MINUTE_MS)
    state.set_policy(Policy(sunset_dates=((VERSION, "2024-03-01"),)))
    issued = issue(state, now=midnight - 1)
    reply, _ = verify(state, issued, now=midnight)
    assert reply == forbidden(f"Version {VERSION} reached its sunset date 2024-03-01")


def test_a_reference_replaced_without_the_challenged_regions_fails():
    state = new_state()
    ready(state)
    issued = issue(state)
    moved = tuple(region(r.offset + 1, r.data) for r in REGIONS)  # same bytes, other places
    upload(state, moved, now=T0 + 1)
    reply, writes = verify(state, issued, now=T0 + 2)
    assert reply == Verified(None, "Verification failed")
    assert writes == [DeleteChallenge(issued.nonce)]


def test_a_reference_replaced_with_other_bytes_at_the_same_places_is_a_mismatch():
    state = new_state()
    ready(state)
    issued = issue(state)
    rebuilt = tuple(region(r.offset, bytes(b ^ 0xFF for b in r.data)) for r in REGIONS)
    upload(state, rebuilt, now=T0 + 1)
    reply, _ = verify(state, issued, now=T0 + 2)
    assert reply == Verified(None, "HMAC mismatch")


@pytest.mark.parametrize(
    ("version", "platform"), [("9.9.9", PLATFORM), (VERSION, "web"), (VERSION, "ios")]
)
def test_a_session_names_the_build_the_challenge_proved(version, platform):
    # The challenge proved the android 1.2.3 binary; the device then registers again with a
    # build token of another build (build tokens are per build, not per device, so any client
    # can present one it has seen). A session issued for the old challenge must not claim the
    # new build: as a web build it would even be a full "attested" token (no trust_level) for
    # a client that never had a binary to prove.
    state = new_state()
    ready(state)
    issued = issue(state)
    registered(state, version=version, platform=platform, now=T0 + 1)
    reply, _ = verify(state, issued, now=T0 + 2)
    if isinstance(reply, Verified) and reply.session is not None:
        assert (reply.session["build_version"], reply.session["platform"]) == (VERSION, PLATFORM)


# -- sweep -------------------------------------------------------------------------------------


def test_sweep_forgets_challenges_older_than_5_minutes():
    state = new_state()
    ready(state)
    registered(state, "device-2")
    old = issue(state, now=T0)
    young = issue(state, "device-2", now=T0 + MINUTE_MS)
    assert state.sweep(T0 + NONCE_TTL_MS) == []
    assert state.sweep(T0 + NONCE_TTL_MS + 1) == [DeleteChallenge(old.nonce)]
    assert set(state.challenges) == {young.nonce}
    assert state.sweep(T0 + NONCE_TTL_MS + 1) == []
    assert state.sweep(T0 + MINUTE_MS + NONCE_TTL_MS + 1) == [DeleteChallenge(young.nonce)]
    assert state.challenges == {}
    assert set(state.devices) == {DEVICE, "device-2"}


def test_sweep_forgets_devices_unseen_for_90_days():
    state = new_state()
    ready(state)
    registered(state, "seen-later", now=T0 + DAY_MS)
    registered(state, "challenged-later", now=T0)
    issued = issue(state, "challenged-later", now=T0 + 2 * DAY_MS)  # a challenge is a sighting
    assert isinstance(
        verify(state, issued, device_id="challenged-later", now=T0 + 2 * DAY_MS)[0], Verified
    )
    assert state.sweep(T0 + DEVICE_TTL_MS) == []
    assert state.sweep(T0 + DEVICE_TTL_MS + 1) == [DeleteDevice(DEVICE)]
    assert set(state.devices) == {"seen-later", "challenged-later"}
    assert state.sweep(T0 + DAY_MS + DEVICE_TTL_MS + 1) == [DeleteDevice("seen-later")]
    assert state.sweep(T0 + 2 * DAY_MS + DEVICE_TTL_MS + 1) == [DeleteDevice("challenged-later")]
    assert state.devices == {}
    assert (VERSION, PLATFORM) in state.references


def test_sweep_returns_every_delete_at_once():
    state = new_state()
    ready(state)
    registered(state, "b")
    first = issue(state, now=T0)
    second = issue(state, "b", now=T0)
    writes = state.sweep(T0 + DEVICE_TTL_MS + 1)
    assert sorted(writes, key=repr) == sorted(
        [
            DeleteChallenge(first.nonce),
            DeleteChallenge(second.nonce),
            DeleteDevice(DEVICE),
            DeleteDevice("b"),
        ],
        key=repr,
    )
    assert state.devices == {}
    assert state.challenges == {}


def test_sweeping_a_device_drops_its_open_challenges():
    # Only a store written by another version could hold a device older than its challenge;
    # the sweep must still leave no challenge of a forgotten device.
    state = new_state()
    device = Device(DEVICE, VERSION, PLATFORM, "h", T0, T0)
    challenge = Challenge("ab" * 32, DEVICE, VERSION, PLATFORM, ((0, 16),), T0 + DEVICE_TTL_MS)
    state.load([device], [], [challenge], None)
    assert state.sweep(T0 + DEVICE_TTL_MS + 1) == [DeleteDevice(DEVICE), DeleteChallenge("ab" * 32)]
    assert state.challenges == {}


def test_after_a_sweep_a_device_has_its_5_challenges_again():
    state = new_state()
    ready(state)
    for i in range(5):
        issue(state, now=T0 + i)
    assert len(state.sweep(T0 + 4 + NONCE_TTL_MS + 1)) == 5
    assert state.challenges == {}
    later = T0 + 10 * MINUTE_MS
    for i in range(5):
        reply, writes = state.challenge(RequestChallenge(DEVICE, VERSION), later + i)
        assert isinstance(reply, Issued), i
        # Nothing left to expire: the sweep emptied the device's open set.
        assert [type(w) for w in writes] == [PutDevice, PutChallenge]
    assert state.challenge(RequestChallenge(DEVICE, VERSION), later + 5)[0] == TOO_MANY_CHALLENGES


def test_a_half_swept_device_counts_only_what_is_left():
    state = new_state()
    ready(state)
    for _ in range(3):
        issue(state, now=T0)
    for _ in range(2):
        issue(state, now=T0 + 2 * MINUTE_MS)
    assert len(state.sweep(T0 + NONCE_TTL_MS + 1)) == 3
    for _ in range(3):
        assert isinstance(
            state.challenge(RequestChallenge(DEVICE, VERSION), T0 + NONCE_TTL_MS + 2)[0], Issued
        )
    reply, _ = state.challenge(RequestChallenge(DEVICE, VERSION), T0 + NONCE_TTL_MS + 3)
    assert reply == TOO_MANY_CHALLENGES


# -- anomalies ---------------------------------------------------------------------------------


def challenge_and_verify(state: AttestationState, now: int) -> None:
    issued = issue(state, now=now)
    assert isinstance(verify(state, issued, now=now)[0], Verified)


def test_eleven_challenges_within_5_minutes_raise_a_flag(caplog):
    caplog.set_level(logging.WARNING, logger="zajel.attestation")
    state = new_state()
    ready(state)
    step = (NONCE_TTL_MS - 1) // 10  # the 11 challenges span just under 5 minutes
    for i in range(10):
        challenge_and_verify(state, T0 + i * step)
    assert state.devices[DEVICE].anomaly_flags == ()
    assert "challenge flood" not in caplog.text
    issued = issue(state, now=T0 + 10 * step)
    device = state.devices[DEVICE]
    assert device.anomaly_flags == ("challenge_flood",)
    assert "challenge flood" in caplog.text
    assert state.statistics(T0 + 10 * step)["flaggedDevices"] == 1
    # The flag is raised once, stays, and is carried into the session's device record.
    verify(state, issued, now=T0 + 10 * step)
    challenge_and_verify(state, T0 + 10 * step + 1)
    assert state.devices[DEVICE].anomaly_flags == ("challenge_flood",)


def test_eleven_challenges_over_more_than_5_minutes_raise_no_flag():
    state = new_state()
    ready(state)
    for i in range(11):  # the first is exactly 5 minutes old at the eleventh
        challenge_and_verify(state, T0 + i * NONCE_TTL_MS // 10)
    assert state.devices[DEVICE].anomaly_flags == ()
    for i in range(30):  # one every 31 s, for 15 minutes
        challenge_and_verify(state, T0 + HOUR_MS + i * 31 * SECOND_MS)
    assert state.devices[DEVICE].anomaly_flags == ()


def test_the_challenge_history_keeps_the_last_20():
    state = new_state()
    ready(state)
    times = [T0 + i * MINUTE_MS for i in range(30)]
    for now in times:
        challenge_and_verify(state, now)
        assert len(state.devices[DEVICE].challenge_times) <= 20
    assert state.devices[DEVICE].challenge_times == tuple(times[-20:])


def test_refused_challenges_are_recorded_too():
    state = new_state()
    ready(state)
    for i in range(11):  # 5 issued, then 6 refused as too many
        state.challenge(RequestChallenge(DEVICE, VERSION), T0 + i)
    assert state.devices[DEVICE].challenge_times == tuple(T0 + i for i in range(11))
    assert state.devices[DEVICE].anomaly_flags == ("challenge_flood",)


# -- the rest ----------------------------------------------------------------------------------


def test_upload_reference_replaces_the_reference_of_its_version_and_platform():
    state = new_state()
    first = upload(state, REGIONS[:3])
    other_platform = upload(state, REGIONS[:4], platform="ios")
    reference, writes = state.upload_reference(
        UploadReference(VERSION, PLATFORM, "rebuilt", 4096, REGIONS[3:]), T0 + 9
    )
    assert reference == Reference(VERSION, PLATFORM, "rebuilt", 4096, REGIONS[3:], T0 + 9)
    assert writes == [PutReference(reference)]
    assert state.references == {
        (VERSION, PLATFORM): reference,
        (VERSION, "ios"): other_platform,
    }
    assert first != reference


def test_set_policy_replaces_the_whole_policy():
    state = new_state()
    assert state.policy == Policy()
    strict = Policy("1.1.0", "1.2.0", ("1.1.5",), (("1.1.0", "2030-01-01"),))
    assert state.set_policy(strict) == [PutPolicy(strict)]
    assert state.policy == strict
    assert state.set_policy(Policy()) == [PutPolicy(Policy())]
    assert state.policy == Policy()


def test_load_restores_everything_including_the_open_counts():
    state = new_state()
    ready(state)
    state.set_policy(Policy(recommended_version="2.0.0"))
    issued = [issue(state, now=T0 + i) for i in range(5)]
    fresh = new_state(seed=1)
    fresh.load(
        list(state.devices.values()),
        list(state.references.values()),
        list(state.challenges.values()),
        state.policy,
    )
    assert fresh.devices == state.devices
    assert fresh.references == state.references
    assert fresh.challenges == state.challenges
    assert fresh.policy == state.policy
    assert fresh.challenge(RequestChallenge(DEVICE, VERSION), T0 + 9)[0] == TOO_MANY_CHALLENGES
    assert isinstance(verify(fresh, issued[3], now=T0 + 10)[0], Verified)
    assert isinstance(fresh.challenge(RequestChallenge(DEVICE, VERSION), T0 + 11)[0], Issued)


def test_load_without_a_policy_is_the_default_policy():
    state = new_state()
    state.set_policy(Policy(blocked_versions=(VERSION,)))
    state.load([], [], [], None)
    assert state.policy == Policy()
    assert (state.devices, state.references, state.challenges) == ({}, {}, {})


def test_statistics():
    state = new_state()
    ready(state)
    upload(state, platform="ios")
    registered(state, "b")
    issue(state, now=T0)
    issue(state, "b", now=T0 + MINUTE_MS)
    assert state.statistics(T0 + MINUTE_MS) == {
        "devices": 2,
        "references": 2,
        "openChallenges": 2,
        "flaggedDevices": 0,
    }
    # An expired challenge is not counted as open, even before the sweep removes it.
    assert state.statistics(T0 + NONCE_TTL_MS + 1)["openChallenges"] == 1


# -- every change is mirrored by the writes ----------------------------------------------------


def mirrors(store: MemoryStore, state: AttestationState) -> bool:
    """Whether the store, after every write the state returned, holds exactly the state."""
    return (store.devices, store.references, store.challenges, store.policy or Policy()) == (
        state.devices,
        state.references,
        state.challenges,
        state.policy,
    )


DEVICES = ("d0", "d1", "d2", "d3")
ADDRESSES = ("203.0.113.7", "198.51.100.9")
VERSIONS = ("1.0.0", "1.2.3", "2.0.0")

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("advance"),
            st.sampled_from([0, 1, 1000, MINUTE_MS, NONCE_TTL_MS, HOUR_MS, 45 * DAY_MS]),
        ),
        st.tuples(
            st.just("register"),
            st.sampled_from(DEVICES),
            st.sampled_from(VERSIONS),
            st.sampled_from([PLATFORM, "web"]),
            st.sampled_from(ADDRESSES),
        ),
        st.tuples(st.just("upload"), st.sampled_from(VERSIONS), st.integers(1, 8)),
        st.tuples(st.just("challenge"), st.sampled_from(DEVICES), st.sampled_from(VERSIONS)),
        st.tuples(
            st.just("verify"),
            st.sampled_from(DEVICES),
            st.integers(0, 10),
            st.sampled_from(["right", "wrong", "short"]),
        ),
        st.tuples(st.just("policy"), st.sampled_from(VERSIONS), st.booleans()),
        st.tuples(st.just("sweep")),
    ),
    max_size=60,
)


@settings(deadline=None, max_examples=200)
@given(operations)
def test_the_writes_mirror_every_change_and_the_invariants_hold(ops):
    # Small caps, so that the native cap, the web space's evictions and the per-IP limit happen.
    state = new_state(max_devices=2, web_devices_max=2, registrations_per_ip_per_hour=2)
    mirror = MemoryStore()
    now = T0
    issued: list[tuple[Issued, tuple[Region, ...]]] = []
    uploaded: dict[str, tuple[Region, ...]] = {}
    for op in ops:
        kind = op[0]
        writes: list[Any] = []
        if kind == "advance":
            now += op[1]
        elif kind == "register":
            _, device_id, version, platform, ip = op
            token = claims(version, platform, timestamp=now)
            _, writes = state.register(device_id, token, now, ip=ip)
        elif kind == "upload":
            _, version, count = op
            uploaded[version] = REGIONS[:count]
            _, writes = state.upload_reference(
                UploadReference(version, PLATFORM, "h", 0, REGIONS[:count]), now
            )
        elif kind == "challenge":
            _, device_id, version = op
            reply, writes = state.challenge(RequestChallenge(device_id, version), now)
            if isinstance(reply, Issued):
                issued.append((reply, uploaded[version]))
        elif kind == "verify" and issued:
            _, device_id, which, how = op
            challenge, regions = issued[which % len(issued)]
            right = answers(challenge, regions)
            responses = {
                "right": right,
                "wrong": tuple((i, "0" * 64) for i, _ in right),
                "short": right[1:],
            }[how]
            reply, writes = state.verify(
                VerifyChallenge(device_id, challenge.nonce, responses), now
            )
            if isinstance(reply, Verified) and reply.session is not None:
                assert how == "right"
        elif kind == "policy":
            _, version, block = op
            policy = Policy(blocked_versions=(version,)) if block else Policy()
            writes = state.set_policy(policy)
        elif kind == "sweep":
            writes = state.sweep(now)
        mirror.apply_nowait(writes)
        assert mirrors(mirror, state), op
        per_device: dict[str, int] = {}
        for challenge in state.challenges.values():
            per_device[challenge.device_id] = per_device.get(challenge.device_id, 0) + 1
            assert challenge.device_id in state.devices
        assert all(count <= 5 for count in per_device.values())
        for device in state.devices.values():
            assert len(device.challenge_times) <= 20
            assert len(device.web_registrations) <= 10
        assert state._open == {
            d: {n for n, c in state.challenges.items() if c.device_id == d} for d in per_device
        }
        web = [d.device_id for d in state.devices.values() if d.platform == "web"]
        assert sorted(state._web) == sorted(web)
        assert len(web) <= 2
        assert len(state.devices) - len(web) <= 2
        assert state.registrations.entries() <= 2 * len(ADDRESSES)
