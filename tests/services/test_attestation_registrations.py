"""Bulk registration against the attestation registry (docs/protocol/attestation.md,
"Limits and timers"): new device ids per client IP and rolling hour, the web devices' own space
and shorter retention, and the memory each keeps. ``AttestationState`` is driven with explicit
epoch ms; the service is run under trio's mock clock."""

from __future__ import annotations

import logging
import random

import attrs
import trio

from tests.services.test_attestation_service import register_request, registry, started
from tests.services.test_attestation_state import (
    DAY_MS,
    DEVICE_TTL_MS,
    HOUR_MS,
    MINUTE_MS,
    PLATFORM,
    T0,
    claims,
    new_state,
    ready,
)
from zajel.config import Config
from zajel.protocol import errors
from zajel.protocol.attestation import RegisterDevice
from zajel.protocol.errors import ProtocolError
from zajel.protocol.limits import KeyedSlidingWindow
from zajel.services.attestation import (
    MAX_DEVICES,
    AttestationRegistry,
    AttestationState,
    Registered,
)
from zajel.storage import DeleteDevice, MemoryStore, PutDevice

TOO_MANY_NEW = ProtocolError(
    errors.TOO_MANY, "Too many new devices registered from this address. Try again later."
)
FULL = ProtocolError(errors.REGISTRY_FULL, "Device registry full")
WEB_TTL_MS = 24 * HOUR_MS
IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"


def register(
    state: AttestationState,
    device_id: str,
    now: int = T0,
    *,
    ip: str = IP,
    platform: str = PLATFORM,
    version: str = "1.2.3",
):
    return state.register(device_id, claims(version, platform, timestamp=now), now, ip=ip)


def registered(state: AttestationState, device_id: str, now: int = T0, **options) -> Registered:
    reply, _ = register(state, device_id, now, **options)
    assert isinstance(reply, Registered), (device_id, reply)
    return reply


# -- new device ids per client IP ---------------------------------------------------------------


def test_an_address_registers_at_most_30_new_devices_in_any_rolling_hour():
    state = new_state()
    for i in range(30):
        registered(state, f"d{i}", T0 + i * MINUTE_MS, platform="web" if i % 3 else PLATFORM)
    # The 31st new id within the hour of the first, native or web, is refused and stores nothing.
    for platform in (PLATFORM, "web"):
        assert register(state, "late", T0 + 30 * MINUTE_MS, platform=platform) == (
            TOO_MANY_NEW,
            [],
        )
        assert register(state, "late", T0 + HOUR_MS - 1, platform=platform) == (TOO_MANY_NEW, [])
    assert "late" not in state.devices
    # Another address, and another IPv6 /64, have their own allowance.
    registered(state, "elsewhere", T0 + 31 * MINUTE_MS, ip=OTHER_IP)
    registered(state, "v6", T0 + 31 * MINUTE_MS, ip="2001:db8:1:2::/64")
    # Rolling: an hour after the first, one more; an hour after the second, another.
    registered(state, "late", T0 + HOUR_MS)
    assert register(state, "later", T0 + HOUR_MS + 1) == (TOO_MANY_NEW, [])
    registered(state, "later", T0 + HOUR_MS + MINUTE_MS)
    assert len(state.devices) == 34


def test_a_known_device_re_registers_however_often_and_from_anywhere():
    state = new_state(registrations_per_ip_per_hour=2)
    registered(state, "a")
    registered(state, "b")
    assert register(state, "c", T0 + 1) == (TOO_MANY_NEW, [])
    # Devices sharing one build token behind one address keep working once registered: as
    # another version, as web and back, from another address.
    for step in range(1, 20):  # within the hour of the first two
        now = T0 + step * 3 * MINUTE_MS
        registered(state, "a", now, version="1.3.0")
        registered(state, "b", now, platform="web" if step % 2 else PLATFORM)
        registered(state, "a", now, ip=OTHER_IP)
    assert register(state, "c", T0 + 58 * MINUTE_MS) == (TOO_MANY_NEW, [])


def test_a_refused_registration_takes_nothing_from_the_allowance():
    state = new_state(registrations_per_ip_per_hour=2, max_devices=1)
    registered(state, "a")
    # Registry full, a bad token, a blocked version: none of them counts as a new device.
    assert register(state, "b", T0 + 1) == (FULL, [])
    stale = state.register("b", claims(timestamp=T0 - 31 * DAY_MS), T0 + 2, ip=IP)
    assert stale[0].code == errors.FORBIDDEN
    registered(state, "web-b", T0 + 3, platform="web")  # the second and last new id
    assert register(state, "web-c", T0 + 4, platform="web") == (TOO_MANY_NEW, [])


def test_the_per_ip_counts_survive_a_reload_and_are_pruned_by_the_sweep():
    state = new_state(registrations_per_ip_per_hour=1)
    registered(state, "a")
    # A reload after a store failure replaces the records, not the allowances.
    state.load(list(state.devices.values()), [], [], None)
    assert register(state, "b", T0 + 1) == (TOO_MANY_NEW, [])
    assert len(state.registrations) == 1
    state.sweep(T0 + HOUR_MS - 1)
    assert len(state.registrations) == 1
    state.sweep(T0 + HOUR_MS)
    assert len(state.registrations) == 0
    registered(state, "b", T0 + HOUR_MS)


def test_the_per_ip_counts_stay_bounded_whatever_the_clients_do():
    limit = KeyedSlidingWindow(3, HOUR_MS, max_keys=100)
    now = T0
    for i in range(5000):  # 5000 new devices from 1000 addresses, five each
        address = f"10.0.{i % 1000 // 256}.{i % 256}"
        now += 10
        if limit.allows(address, now):
            limit.record(address, now)
        assert len(limit) <= 100
        assert limit.entries() <= 3 * 100
    # One address flooding keeps only its last ``limit`` times.
    for i in range(1000):
        limit.record("flood", now + i)
    assert limit.entries() <= 3 * 100
    assert not limit.allows("flood", now + 1000)
    limit.prune(now + 999 + HOUR_MS)
    assert (len(limit), limit.entries()) == (0, 0)


# -- web devices apart ---------------------------------------------------------------------------


def test_web_devices_filling_their_space_never_refuse_a_native_registration():
    state = new_state(max_devices=2, web_devices_max=3, registrations_per_ip_per_hour=1000)
    for i in range(50):
        registered(state, f"browser-{i}", T0 + i, platform="web")
        assert state.web_devices <= 3
    registered(state, "phone-1", T0 + 100)
    registered(state, "phone-2", T0 + 101)
    # The native space has its own cap.
    assert register(state, "phone-3", T0 + 102) == (FULL, [])
    assert (state.native_devices, state.web_devices) == (2, 3)
    # Web registrations go on with the native space full.
    registered(state, "browser-late", T0 + 103, platform="web")
    assert sorted(d for d in state.devices if d.startswith("browser")) == [
        "browser-48",
        "browser-49",
        "browser-late",
    ]


def test_a_full_web_space_forgets_the_least_recently_seen_web_device():
    state = new_state(web_devices_max=3)
    for i, name in enumerate(("w1", "w2", "w3")):
        registered(state, name, T0 + i, platform="web")
    registered(state, "w1", T0 + 10, platform="web")  # seen again: now the most recent
    reply, writes = register(state, "w4", T0 + 11, platform="web")
    assert isinstance(reply, Registered)
    assert writes == [DeleteDevice("w2"), PutDevice(reply.device)]
    assert sorted(state.devices) == ["w1", "w3", "w4"]
    assert state.web_evicted == 1
    # A native device becoming web takes a web place; a web device becoming native, a native one.
    registered(state, "n1", T0 + 12)
    reply, writes = register(state, "n1", T0 + 13, platform="web")
    assert writes == [DeleteDevice("w3"), PutDevice(reply.device)]
    assert (state.native_devices, state.web_devices) == (0, 3)
    registered(state, "w1", T0 + 14)
    assert (state.native_devices, state.web_devices) == (1, 2)


def test_a_web_device_cannot_become_native_while_the_native_space_is_full():
    state = new_state(max_devices=1)
    registered(state, "phone")
    registered(state, "browser", platform="web")
    assert register(state, "browser", T0 + 1) == (FULL, [])
    assert state.devices["browser"].platform == "web"


def test_web_devices_are_forgotten_after_24_hours_unseen_native_ones_after_90_days():
    state = new_state()
    ready(state, "phone")
    registered(state, "browser", platform="web")
    registered(state, "browser-back", platform="web")
    registered(state, "browser-back", T0 + 20 * HOUR_MS, platform="web")  # came back
    assert state.sweep(T0 + WEB_TTL_MS) == []
    assert state.sweep(T0 + WEB_TTL_MS + 1) == [DeleteDevice("browser")]
    assert state.sweep(T0 + 20 * HOUR_MS + WEB_TTL_MS + 1) == [DeleteDevice("browser-back")]
    assert sorted(state.devices) == ["phone"]
    assert state.sweep(T0 + DEVICE_TTL_MS + 1) == [DeleteDevice("phone")]
    assert state.web_devices == 0


def test_load_orders_web_devices_by_last_seen():
    state = new_state(web_devices_max=3)
    for name, seen in (("late", T0 + 30), ("early", T0 + 10), ("middle", T0 + 20)):
        registered(state, name, seen, platform="web")
    registered(state, "phone", T0)
    fresh = new_state(web_devices_max=3)
    fresh.load(list(reversed(state.devices.values())), [], [], None)
    assert (fresh.native_devices, fresh.web_devices) == (1, 3)
    _, writes = register(fresh, "newest", T0 + 40, platform="web")
    assert writes[0] == DeleteDevice("early")


# -- the service ---------------------------------------------------------------------------------


def test_the_configured_limits_reach_the_state():
    config = Config(
        env="development", attest_registrations_per_ip_per_hour=7, attest_web_devices_max=123
    )
    state = AttestationRegistry.from_config(config).state
    assert (state.registrations.limit, state.web_devices_max) == (7, 123)
    assert state.max_devices == MAX_DEVICES


async def test_the_service_counts_by_the_request_ip_and_logs_forgotten_web_devices(
    autojump_clock, caplog
):
    caplog.set_level(logging.INFO, logger="zajel.attestation")
    store = MemoryStore()
    service = registry()
    service.state = AttestationState(
        rng=random.Random(7), web_devices_max=2, registrations_per_ip_per_hour=3
    )
    async with trio.open_nursery() as nursery:
        _, address = await started(nursery, store, service)
        for i in range(3):
            reply = await address.call(web_request(service, f"browser-{i}", IP))
            assert isinstance(reply, Registered)
        assert await address.call(web_request(service, "browser-3", IP)) == TOO_MANY_NEW
        reply = await address.call(web_request(service, "browser-3", OTHER_IP))
        assert isinstance(reply, Registered)
        # Only the two most recent web devices are kept, in the store as in memory.
        assert sorted(store.devices) == ["browser-2", "browser-3"]
        assert "web device space full" not in caplog.text
        await trio.sleep(301)  # the sweep logs the forgotten web devices, once
        records = [r for r in caplog.records if "web device space full" in r.getMessage()]
        assert len(records) == 1
        assert getattr(records[0], "context", {})["forgotten"] == 2
        nursery.cancel_scope.cancel()


def web_request(service: AttestationRegistry, device_id: str, ip: str) -> RegisterDevice:
    """A web registration from ``ip``, as the web layer hands it to the registry."""
    return attrs.evolve(register_request(service, device_id, platform="web"), ip=ip)
