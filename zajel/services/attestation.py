"""AttestationRegistry: is this a genuine build? (``docs/protocol/attestation.md``).

The release pipeline uploads, per version and platform, critical regions of the genuine binary
and sets the version policy. A device registers with a build token the pipeline signed; to earn a
session token it answers a challenge with HMACs over regions of its own binary, keyed by a fresh
nonce. Web clients, which have no binary, get a weaker, shorter token at registration.

Registration is open to anyone holding a build token, and a build token ships inside every copy
of the app, so the registry is bounded against clients that register device ids in bulk
(docs/protocol/attestation.md, "Limits and timers"):

- each client IP (IPv6 by its /64) registers at most ``registrations_per_ip_per_hour`` *new*
  device ids in any rolling hour, web and native alike; a device already registered re-registers
  freely, so a device, or a thousand installs sharing one build token behind one address, keeps
  working once registered;
- web devices have a space of their own, ``web_devices_max``, apart from the ``max_devices``
  native ones: when it is full the least recently seen web device is forgotten (a web device
  holds no proof, only the bookkeeping of its hourly limit: forgetting it costs its owner
  nothing but being counted as new at its next registration), so web registrations never refuse
  one another for long and never take a native device's place.

``AttestationState`` is pure state: no I/O, times in epoch milliseconds (devices, nonces and the
policy are stored and must mean the same after a restart), randomness injected. Every change
comes back as store writes beside the reply. ``AttestationRegistry`` is the durable service around
it: keys, build-token signatures, session tokens, the sweep.

Invariants:
- ``_open[d]`` is exactly the set of nonces of open challenges of device ``d`` (no empty sets), so
  the 5-open-challenges rule counts one device's nonces, never every nonce.
- A nonce is used at most once: a verify that reaches the nonce's own device deletes it, whatever
  the outcome; a verify by another device leaves it to its owner.
- A challenge is bound to the version its device registered with, and the policy is checked again
  at challenge and at verify time (hardened).
- ``_web`` holds exactly the ids of the devices whose platform is web, least recently seen
  first; the native devices are the others.
- At most ``max_devices`` native and ``web_devices_max`` web devices; at most
  ``MAX_OPEN_CHALLENGES`` open challenges per device; a device keeps its last
  ``CHALLENGE_HISTORY`` challenge times and its web registrations of the last hour, so every
  device record is bounded. The per-IP counts keep at most ``registrations_per_ip_per_hour``
  times for each of at most ``MAX_LIMITED_ADDRESSES`` addresses (a ``KeyedSlidingWindow``).

Timers: a challenge lives ``NONCE_TTL_MS`` (5 min); a native device unseen for ``DEVICE_TTL_MS``
(90 days) is forgotten, a web device unseen for ``WEB_DEVICE_TTL_MS`` (24 hours); the sweep runs
every ``SWEEP_INTERVAL_S`` (5 min) of trio's clock. An expired nonce is refused even before the
sweep removes it. The per-IP counts live in memory only: a restart gives every address its
allowance back.
"""

from __future__ import annotations

import datetime
import logging
import random
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

import attrs
from nacl.signing import SigningKey, VerifyKey

from zajel import crypto
from zajel.clock import WallClock
from zajel.config import Config
from zajel.crypto.tokens import (
    decode_signature,
    hex_equal,
    hmac_sha256_hex,
    sign_token,
    verify_detached,
)
from zajel.logs import context
from zajel.protocol import errors
from zajel.protocol.attestation import (
    WEB_PLATFORM,
    BuildClaims,
    Challenge,
    Device,
    Policy,
    Reference,
    Region,
    RegisterDevice,
    RequestChallenge,
    UploadReference,
    VerifyChallenge,
    check_policy,
    parse_build_token_payload,
)
from zajel.protocol.errors import ProtocolError
from zajel.protocol.limits import KeyedSlidingWindow
from zajel.services._durable import DurableServiceBase, signing_key_from
from zajel.storage import (
    DeleteChallenge,
    DeleteDevice,
    PutChallenge,
    PutDevice,
    PutPolicy,
    PutReference,
    Store,
    Write,
)

log = logging.getLogger("zajel.attestation")

NONCE_TTL_MS: Final = 5 * 60 * 1000
DEVICE_TTL_MS: Final = 90 * 24 * 3600 * 1000
# A web device's record only serves its hourly registration limit (it holds no proof, and its
# 15-minute session token is checked offline), but a web client that comes back within the day
# should find itself known: re-registering a known device never counts against its address,
# so browsers behind one office or campus address are not counted again at every visit.
WEB_DEVICE_TTL_MS: Final = 24 * 3600 * 1000
TOKEN_MAX_AGE_MS: Final = 30 * 24 * 3600 * 1000
TOKEN_MAX_SKEW_MS: Final = 60 * 1000
SESSION_TTL_MS: Final = 3600 * 1000
WEB_SESSION_TTL_MS: Final = 15 * 60 * 1000
MAX_DEVICES: Final = 100_000  # native devices
# The defaults of ZAJEL_ATTEST_WEB_DEVICES_MAX and ZAJEL_ATTEST_REGISTRATIONS_PER_IP_PER_HOUR.
WEB_DEVICES_MAX: Final = 10_000
REGISTRATIONS_PER_IP_PER_HOUR: Final = 30
# Addresses whose new registrations of the last hour are remembered: about 25 MB at worst with
# the default limit of 30 (per address, an array of up to 30 8-byte times and a key). Past it the
# address that registered least recently is forgotten and gets its allowance back early; only a
# client holding more addresses than this gains from that, and their own allowance is larger.
MAX_LIMITED_ADDRESSES: Final = 50_000
MAX_OPEN_CHALLENGES: Final = 5
CHALLENGE_REGIONS: Final = (3, 5)
NONCE_BYTES: Final = 32
WEB_REGISTRATIONS_PER_HOUR: Final = 10
HOUR_MS: Final = 3600 * 1000
CHALLENGE_HISTORY: Final = 20
ANOMALY_WINDOW_MS: Final = 5 * 60 * 1000
ANOMALY_CHALLENGES: Final = 10  # more than this many within the window raise a flag
ANOMALY_FLAG: Final = "challenge_flood"
SWEEP_INTERVAL_S: Final = 300.0


@attrs.frozen
class Registered:
    """Reply to ``RegisterDevice``. A web device also gets a session: ``session`` holds its
    claims, and ``session_token`` the signed token once the service has signed them."""

    device: Device
    version_status: str
    recommended_version: str | None
    session: dict[str, Any] | None = None
    session_token: str | None = None


@attrs.frozen
class Issued:
    """Reply to ``RequestChallenge``: the nonce and the regions (index, offset, length)."""

    nonce: str
    regions: tuple[tuple[int, int, int], ...]


@attrs.frozen
class Verified:
    """Reply to ``VerifyChallenge``: ``session`` holds the token's claims (and
    ``session_token`` the signed token) when valid, else ``error`` says why (answered as 200
    ``{"valid":false,…}``)."""

    session: dict[str, Any] | None
    error: str | None = None
    session_token: str | None = None


@attrs.frozen
class ReferenceStored:
    reference: Reference


@attrs.frozen
class PolicySet:
    policy: Policy


@attrs.frozen
class GetPolicy:
    """Request: reply with the ``Policy``."""


@attrs.frozen
class GetAttestationStats:
    """Request: reply with a ``dict`` of counters for ``/stats``."""


def forbidden(message: str) -> ProtocolError:
    return ProtocolError(errors.FORBIDDEN, message)


TOO_MANY_NEW_DEVICES: Final = "Too many new devices registered from this address. Try again later."


def _too_many(message: str) -> ProtocolError:
    return ProtocolError(errors.TOO_MANY, message)


class AttestationState:
    """Devices, references, open challenges and the policy. No I/O; times are epoch ms."""

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        max_devices: int = MAX_DEVICES,
        web_devices_max: int = WEB_DEVICES_MAX,
        registrations_per_ip_per_hour: int = REGISTRATIONS_PER_IP_PER_HOUR,
    ) -> None:
        self.rng = rng if rng is not None else secrets.SystemRandom()
        self.token_bytes = token_bytes
        self.max_devices = max_devices
        self.web_devices_max = web_devices_max
        self.devices: dict[str, Device] = {}
        self.references: dict[tuple[str, str], Reference] = {}
        self.challenges: dict[str, Challenge] = {}
        self.policy = Policy()
        self._open: dict[str, set[str]] = {}
        self._web: OrderedDict[str, None] = OrderedDict()
        # In memory only, and kept across load(): a reload after a store failure must not give
        # every address its allowance back.
        self.registrations = KeyedSlidingWindow(
            registrations_per_ip_per_hour, HOUR_MS, max_keys=MAX_LIMITED_ADDRESSES
        )
        # Web devices forgotten to make room since the service last logged it.
        self.web_evicted = 0

    def load(
        self,
        devices: list[Device],
        references: list[Reference],
        challenges: list[Challenge],
        policy: Policy | None,
    ) -> None:
        self.devices = {device.device_id: device for device in devices}
        self._web = OrderedDict(
            (device.device_id, None)
            for device in sorted(devices, key=lambda device: device.last_seen)
            if device.platform == WEB_PLATFORM
        )
        self.references = {(ref.version, ref.platform): ref for ref in references}
        self.challenges = {}
        self._open = {}
        for challenge in challenges:
            self._add_challenge(challenge)
        self.policy = policy if policy is not None else Policy()

    # -- the requests --------------------------------------------------------------------------

    @property
    def native_devices(self) -> int:
        return len(self.devices) - len(self._web)

    @property
    def web_devices(self) -> int:
        return len(self._web)

    def register(
        self, device_id: str, claims: BuildClaims, now_ms: int, *, ip: str = ""
    ) -> tuple[Registered | ProtocolError, list[Write]]:
        """Register (or re-register) a device whose build token's signature was verified.

        ``ip`` is the client's per-IP key; in-process callers that give none share one.
        """
        age = now_ms - claims.timestamp
        if age < -TOKEN_MAX_SKEW_MS:
            return forbidden("Build token has a future timestamp"), []
        if age > TOKEN_MAX_AGE_MS:
            return forbidden("Build token expired"), []
        verdict = check_policy(self.policy, claims.version, today=_day(now_ms))
        if not verdict.allowed:
            assert verdict.reason is not None
            return forbidden(verdict.reason), []
        previous = self.devices.get(device_id)
        if previous is None and not self.registrations.allows(ip, now_ms):
            return _too_many(TOO_MANY_NEW_DEVICES), []
        web = claims.platform == WEB_PLATFORM
        was_web = previous is not None and previous.platform == WEB_PLATFORM
        joins_native = not web and (previous is None or was_web)
        if joins_native and self.native_devices >= self.max_devices:
            return ProtocolError(errors.REGISTRY_FULL, "Device registry full"), []
        recent_web = tuple(
            t for t in (previous.web_registrations if previous else ()) if now_ms - t < HOUR_MS
        )
        if web and len(recent_web) >= WEB_REGISTRATIONS_PER_HOUR:
            return _too_many("Too many web registrations for this device. Try again later."), []
        writes: list[Write] = []
        if web and not was_web:
            while len(self._web) >= self.web_devices_max:
                writes += self._forget(next(iter(self._web)))
                self.web_evicted += 1
        if previous is None:
            self.registrations.record(ip, now_ms)
        device = Device(
            device_id=device_id,
            build_version=claims.version,
            platform=claims.platform,
            build_hash=claims.build_hash,
            registered_at=now_ms,
            last_seen=now_ms,
            # What a device did before it registered again stays on its record.
            anomaly_flags=previous.anomaly_flags if previous else (),
            challenge_times=previous.challenge_times if previous else (),
            web_registrations=(*recent_web, now_ms) if web else recent_web,
        )
        self._put(device)
        writes.append(PutDevice(device))
        session = None
        if web:
            session = _claims(device, now_ms, WEB_SESSION_TTL_MS, trust_level="web_fallback")
        recommended = (
            self.policy.recommended_version if verdict.status == "update_recommended" else None
        )
        return Registered(device, verdict.status, recommended, session), writes

    def challenge(
        self, request: RequestChallenge, now_ms: int
    ) -> tuple[Issued | ProtocolError, list[Write]]:
        """Open a challenge over 3-5 distinct regions, drawn by weight."""
        device = self.devices.get(request.device_id)
        if device is None:
            return ProtocolError(errors.NOT_FOUND, "Device not registered"), []
        if device.platform == WEB_PLATFORM:
            return errors.invalid_field(
                "Binary attestation not available for web platform. Use registration token."
            ), []
        device = self._seen(device, now_ms, challenged=True)
        writes: list[Write] = [PutDevice(device)]
        if request.build_version != device.build_version:
            return forbidden("Build version does not match registration"), writes
        verdict = check_policy(self.policy, device.build_version, today=_day(now_ms))
        if not verdict.allowed:
            assert verdict.reason is not None
            return forbidden(verdict.reason), writes
        writes += self._expire_open(device.device_id, now_ms)
        if len(self._open.get(device.device_id, ())) >= MAX_OPEN_CHALLENGES:
            return _too_many(
                "Too many pending challenges. Please complete or wait for existing "
                "challenges to expire."
            ), writes
        reference = self.references.get((device.build_version, device.platform))
        if reference is None:
            return ProtocolError(
                errors.NOT_FOUND, "No reference binary found for this version and platform"
            ), writes
        picked = self._pick_regions(reference)
        challenge = Challenge(
            nonce=self.token_bytes(NONCE_BYTES).hex(),
            device_id=device.device_id,
            build_version=device.build_version,
            platform=device.platform,
            regions=tuple((region.offset, region.length) for region in picked),
            created_at=now_ms,
        )
        self._add_challenge(challenge)
        writes.append(PutChallenge(challenge))
        regions = tuple((i, offset, length) for i, (offset, length) in enumerate(challenge.regions))
        return Issued(challenge.nonce, regions), writes

    def verify(
        self, request: VerifyChallenge, now_ms: int
    ) -> tuple[Verified | ProtocolError, list[Write]]:
        """Check the answers to a challenge; the nonce is used up once its device presents it."""
        challenge = self.challenges.get(request.nonce)
        if challenge is None:
            return forbidden("Invalid or expired nonce"), []
        if now_ms - challenge.created_at > NONCE_TTL_MS:
            return forbidden("Challenge expired"), self._drop_challenge(challenge)
        if challenge.device_id != request.device_id:
            # The nonce stays usable by its own device: a guess by another must not burn it.
            return forbidden("Device ID mismatch"), []
        writes = self._drop_challenge(challenge)
        verdict = check_policy(self.policy, challenge.build_version, today=_day(now_ms))
        if not verdict.allowed:
            assert verdict.reason is not None
            return forbidden(verdict.reason), writes
        failure = self._check_responses(challenge, request.responses)
        if failure is not None:
            log.warning(
                "attestation failed", extra=context(device=request.device_id, reason=failure)
            )
            return Verified(None, failure), writes
        device = self.devices.get(challenge.device_id)
        if device is None:  # forgotten since the challenge: it must register again
            return ProtocolError(errors.NOT_FOUND, "Device not registered"), writes
        writes.append(PutDevice(self._seen(device, now_ms)))
        # The token names what the answers proved: the challenge's build, whatever the device
        # registered as since (a build token proves a build, not that this device runs it).
        return Verified(_claims(challenge, now_ms, SESSION_TTL_MS)), writes

    def upload_reference(
        self, request: UploadReference, now_ms: int
    ) -> tuple[Reference, list[Write]]:
        reference = Reference(
            version=request.version,
            platform=request.platform,
            build_hash=request.build_hash,
            size=request.size,
            regions=request.regions,
            uploaded_at=now_ms,
        )
        self.references[reference.version, reference.platform] = reference
        return reference, [PutReference(reference)]

    def set_policy(self, policy: Policy) -> list[Write]:
        self.policy = policy
        return [PutPolicy(policy)]

    def sweep(self, now_ms: int) -> list[Write]:
        """Forget challenges past their life, native devices unseen for 90 days and web devices
        unseen for 24 hours, and the per-IP counts of addresses idle for an hour."""
        writes: list[Write] = []
        for challenge in [
            c for c in self.challenges.values() if now_ms - c.created_at > NONCE_TTL_MS
        ]:
            writes += self._drop_challenge(challenge)
        for device_id in [
            d.device_id
            for d in self.devices.values()
            if now_ms - d.last_seen
            > (WEB_DEVICE_TTL_MS if d.platform == WEB_PLATFORM else DEVICE_TTL_MS)
        ]:
            writes += self._forget(device_id)
        self.registrations.prune(now_ms)
        return writes

    def statistics(self, now_ms: int) -> dict[str, int]:
        live = sum(1 for c in self.challenges.values() if now_ms - c.created_at <= NONCE_TTL_MS)
        flagged = sum(1 for d in self.devices.values() if d.anomaly_flags)
        return {
            "devices": len(self.devices),
            "references": len(self.references),
            "openChallenges": live,
            "flaggedDevices": flagged,
        }

    # -- helpers -------------------------------------------------------------------------------

    def _pick_regions(self, reference: Reference) -> list[Region]:
        """3-5 distinct regions, each draw's chance proportional to its weight
        (docs/protocol/attestation.md, "POST /attest/challenge")."""
        low, high = CHALLENGE_REGIONS
        count = min(self.rng.randint(low, high), len(reference.regions))
        remaining = list(reference.regions)
        picked: list[Region] = []
        for _ in range(count):
            total = sum(region.weight for region in remaining)
            point = self.rng.random() * total
            index = len(remaining) - 1  # float sums may leave the point just past the last
            for i, region in enumerate(remaining):
                point -= region.weight
                if point < 0:
                    index = i
                    break
            picked.append(remaining.pop(index))
        return picked

    def _check_responses(
        self, challenge: Challenge, responses: tuple[tuple[int, str], ...]
    ) -> str | None:
        """None when every response is right, else the ``error`` of the invalid answer."""
        if len(responses) != len(challenge.regions):
            return "Wrong number of responses"
        indexes = [index for index, _ in responses]
        # Hardened: each challenged region answered once, so one known region cannot pass all.
        if len(set(indexes)) != len(indexes) or not all(
            0 <= index < len(challenge.regions) for index in indexes
        ):
            return "Verification failed"
        reference = self.references.get((challenge.build_version, challenge.platform))
        if reference is None:
            return "Reference binary no longer available"
        by_place = {(region.offset, region.length): region for region in reference.regions}
        key = bytes.fromhex(challenge.nonce)
        for index, given in responses:
            region = by_place.get(challenge.regions[index])
            if region is None:
                return "Verification failed"
            if not hex_equal(hmac_sha256_hex(key, region.data), given):
                return "HMAC mismatch"
        return None

    def _seen(self, device: Device, now_ms: int, *, challenged: bool = False) -> Device:
        """``device`` seen at ``now_ms``; a challenge is recorded, and a flood flagged."""
        if not challenged:
            device = attrs.evolve(device, last_seen=now_ms)
        else:
            times = (*device.challenge_times, now_ms)[-CHALLENGE_HISTORY:]
            flags = device.anomaly_flags
            recent = sum(1 for t in times if now_ms - t < ANOMALY_WINDOW_MS)
            if recent > ANOMALY_CHALLENGES and ANOMALY_FLAG not in flags:
                flags = (*flags, ANOMALY_FLAG)
                log.warning(
                    "anomaly: challenge flood",
                    extra=context(device=device.device_id, challenges=recent),
                )
            device = attrs.evolve(
                device, last_seen=now_ms, challenge_times=times, anomaly_flags=flags
            )
        self._put(device)
        return device

    def _put(self, device: Device) -> None:
        """Add or replace ``device``, keeping ``_web`` in step (a web device just seen last)."""
        self.devices[device.device_id] = device
        if device.platform == WEB_PLATFORM:
            self._web[device.device_id] = None
            self._web.move_to_end(device.device_id)
        else:
            self._web.pop(device.device_id, None)

    def _forget(self, device_id: str) -> list[Write]:
        """Remove a device and its open challenges."""
        del self.devices[device_id]
        self._web.pop(device_id, None)
        writes: list[Write] = [DeleteDevice(device_id)]
        for nonce in list(self._open.get(device_id, ())):
            writes += self._drop_challenge(self.challenges[nonce])
        return writes

    def _add_challenge(self, challenge: Challenge) -> None:
        self.challenges[challenge.nonce] = challenge
        self._open.setdefault(challenge.device_id, set()).add(challenge.nonce)

    def _drop_challenge(self, challenge: Challenge) -> list[Write]:
        del self.challenges[challenge.nonce]
        nonces = self._open[challenge.device_id]
        nonces.discard(challenge.nonce)
        if not nonces:
            del self._open[challenge.device_id]
        return [DeleteChallenge(challenge.nonce)]

    def _expire_open(self, device_id: str, now_ms: int) -> list[Write]:
        writes: list[Write] = []
        for nonce in list(self._open.get(device_id, ())):
            challenge = self.challenges[nonce]
            if now_ms - challenge.created_at > NONCE_TTL_MS:
                writes += self._drop_challenge(challenge)
        return writes


def _claims(subject: Device | Challenge, now_ms: int, ttl_ms: int, **extra: str) -> dict[str, Any]:
    """The payload of a session token, in the documented field order (docs/protocol/attestation.md,
    "The session token")."""
    return {
        "device_id": subject.device_id,
        "build_version": subject.build_version,
        "platform": subject.platform,
        "issued_at": now_ms,
        "expires_at": now_ms + ttl_ms,
        **extra,
    }


def _day(now_ms: int) -> datetime.date:
    return datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC).date()


class AttestationRegistry(DurableServiceBase):
    """The durable AttestationRegistry service: keys, signatures, session tokens, the sweep."""

    name = "attestation"

    def __init__(
        self,
        state: AttestationState,
        signing_key: SigningKey,
        build_token_key: VerifyKey | None,
        *,
        wall_clock: WallClock | None = None,
    ) -> None:
        super().__init__(wall_clock=wall_clock)
        self.state = state
        self.signing_key = signing_key
        self.build_token_key = build_token_key

    @classmethod
    def from_config(cls, config: Config) -> AttestationRegistry:
        """The registry with the configured keys (an ephemeral session signing key in
        development without one).

        Raises:
            ConfigError: no session signing key outside development.
        """
        key = signing_key_from(
            config.attestation_signing_key,
            env=config.env,
            setting="ATTESTATION_SIGNING_KEY",
            purpose="attestation",
            log=log,
        )
        verify = config.build_token_verify_key
        build_key = crypto.parse_public_key(verify) if verify is not None else None
        state = AttestationState(
            max_devices=MAX_DEVICES,
            web_devices_max=config.attest_web_devices_max,
            registrations_per_ip_per_hour=config.attest_registrations_per_ip_per_hour,
        )
        return cls(state, key, build_key)

    # -- the durable service protocol ------------------------------------------------------

    async def load(self, store: Store) -> None:
        records = await store.load_attestation()
        self.state.load(records.devices, records.references, records.challenges, records.policy)
        self._loaded()
        log.info(
            "loaded",
            extra=context(
                devices=len(records.devices),
                references=len(records.references),
                challenges=len(records.challenges),
            ),
        )

    def handle(self, request: Any, now: float) -> Any:
        now_ms = self._epoch_ms(now)
        kind = type(request)
        if kind is RegisterDevice:
            return self._register(request, now_ms)
        if kind is RequestChallenge:
            return self._record(self.state.challenge(request, now_ms))
        if kind is VerifyChallenge:
            reply = self._record(self.state.verify(request, now_ms))
            if isinstance(reply, Verified) and reply.session is not None:
                log.info("device attested", extra=context(device=request.device_id))
                return attrs.evolve(reply, session_token=self._token(reply.session))
            return reply
        if kind is UploadReference:
            reference = self._record(self.state.upload_reference(request, now_ms))
            log.info(
                "reference uploaded",
                extra=context(version=reference.version, platform=reference.platform),
            )
            return ReferenceStored(reference)
        if kind is Policy:
            self._record((None, self.state.set_policy(request)))
            log.info("version policy set", extra=context(**request.to_json()))
            return PolicySet(request)
        if kind is GetPolicy:
            return self.state.policy
        if kind is GetAttestationStats:
            return self.state.statistics(now_ms)
        raise TypeError(f"unknown request {kind.__name__}")

    def sweep(self, now_ms: int) -> list[Write]:
        if self.state.web_evicted:
            # One line per sweep, however many: under a flood of web registrations this is the
            # sign that web devices are being forgotten early.
            log.warning(
                "web device space full: least recently seen web devices forgotten",
                extra=context(forgotten=self.state.web_evicted, limit=self.state.web_devices_max),
            )
            self.state.web_evicted = 0
        return self.state.sweep(now_ms)

    # -- helpers -----------------------------------------------------------------------------

    def _register(self, request: RegisterDevice, now_ms: int) -> Any:
        if self.build_token_key is None:
            return ProtocolError(errors.NOT_CONFIGURED, "Build token verification not configured")
        signature = decode_signature(request.signature)
        payload = request.payload.encode("utf-8", "surrogatepass")
        if signature is None or not verify_detached(self.build_token_key, payload, signature):
            log.warning("invalid build token signature", extra=context(device=request.device_id))
            return forbidden("Invalid build token signature")
        try:
            claims = parse_build_token_payload(request.payload)
        except ProtocolError as error:
            return error
        reply = self._record(self.state.register(request.device_id, claims, now_ms, ip=request.ip))
        if isinstance(reply, Registered):
            log.info(
                "device registered",
                extra=context(
                    device=request.device_id, version=claims.version, platform=claims.platform
                ),
            )
            if reply.session is not None:
                return attrs.evolve(reply, session_token=self._token(reply.session))
        return reply

    def _token(self, claims: dict[str, Any]) -> str:
        return sign_token(self.signing_key, claims)
