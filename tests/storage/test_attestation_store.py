"""The store contract for the AttestationRegistry's records, over ``MemoryStore``,
``SqliteStore`` and ``RedisStore`` (docs/operations.md, "Storage": devices, references, open
nonces, version policy)."""

from __future__ import annotations

import attrs
import pytest

from zajel.protocol.attestation import Challenge, Device, Policy, Reference, Region
from zajel.protocol.servers import Counters, ServerEntry
from zajel.storage import (
    AttestationRecords,
    DeleteChallenge,
    DeleteDevice,
    PutChallenge,
    PutDevice,
    PutPolicy,
    PutReference,
    PutServer,
    SqliteStore,
    Store,
    StoreError,
)

NOW_MS = 1_700_000_000_000
EMPTY = AttestationRecords([], [], [], None)


def device(device_id: str, **changes: object) -> Device:
    base = Device(
        device_id=device_id,
        build_version="1.2.3",
        platform="android",
        build_hash="sha256-abc",
        registered_at=NOW_MS,
        last_seen=NOW_MS + 5,
        anomaly_flags=("challenge_flood",),
        challenge_times=(NOW_MS + 1, NOW_MS + 2, NOW_MS + 3),
        web_registrations=(),
    )
    return attrs.evolve(base, **changes)


def reference(version: str = "1.2.3", platform: str = "android", **changes: object) -> Reference:
    base = Reference(
        version=version,
        platform=platform,
        build_hash=f"hash-{version}-{platform}",
        size=1 << 20,
        regions=(
            Region(0, 4, "00ff10ab", 1.0),
            Region(4096, 2, "dead", 0.1),
            Region(8192, 3, "beefca", 2.5),
            Region(2**53 - 1, 1, "7f", 1e-6),
            Region(16, 1, "01", 1_000_000.0),
        ),
        uploaded_at=NOW_MS,
    )
    return attrs.evolve(base, **changes)


def challenge(nonce_byte: int, device_id: str = "device-1", **changes: object) -> Challenge:
    base = Challenge(
        nonce=f"{nonce_byte:02x}" * 32,
        device_id=device_id,
        build_version="1.2.3",
        platform="android",
        regions=((8192, 3), (0, 4), (4096, 2)),
        created_at=NOW_MS + nonce_byte,
    )
    return attrs.evolve(base, **changes)


POLICY = Policy(
    minimum_version="1.1.0",
    recommended_version="1.3.0",
    blocked_versions=("1.1.5", "1.2.0"),
    sunset_dates=(("1.2.3", "2030-01-31"), ("1.1.0", "2024-02-29")),
)


def server(server_id: str) -> ServerEntry:
    return ServerEntry(
        server_id, f"wss://{server_id}.example.com", "key", "eu", Counters(), NOW_MS, NOW_MS
    )


def sort_records(records: AttestationRecords) -> tuple[list, list, list, Policy | None]:
    """The records in a fixed order: a store returns them in any order."""
    return (
        sorted(records.devices, key=lambda d: d.device_id),
        sorted(records.references, key=lambda r: (r.version, r.platform)),
        sorted(records.challenges, key=lambda c: c.nonce),
        records.policy,
    )


async def loaded(store: Store) -> tuple[list, list, list, Policy | None]:
    return sort_records(await store.load_attestation())


# -- the contract, every implementation --------------------------------------------------------


async def test_a_new_store_has_no_attestation_records_and_no_policy(store):
    assert await store.load_attestation() == EMPTY


async def test_devices_come_back_exactly(store):
    devices = [
        device("device-1"),
        device(
            "web.browser_2-x",
            platform="web",
            anomaly_flags=(),
            challenge_times=(),
            web_registrations=tuple(NOW_MS + i for i in range(10)),
        ),
        device(
            "flagged",
            anomaly_flags=("challenge_flood", "another_flag"),
            challenge_times=tuple(NOW_MS + i for i in range(20)),
            web_registrations=(NOW_MS,),
            registered_at=0,
            last_seen=2**63 - 1,
        ),
    ]
    await store.apply([PutDevice(d) for d in devices])
    records = await store.load_attestation()
    assert sorted(records.devices, key=lambda d: d.device_id) == sorted(
        devices, key=lambda d: d.device_id
    )
    for loaded_device in records.devices:
        assert type(loaded_device.anomaly_flags) is tuple
        assert type(loaded_device.challenge_times) is tuple
        assert type(loaded_device.web_registrations) is tuple
        assert all(type(t) is int for t in loaded_device.challenge_times)
    assert (records.references, records.challenges, records.policy) == ([], [], None)


async def test_references_come_back_exactly_with_their_float_weights(store):
    references = [
        reference(),
        reference(platform="ios", size=0),
        reference("2.0.0", regions=(Region(7, 1, "aa", 0.3),)),
    ]
    await store.apply([PutReference(r) for r in references])
    records = await store.load_attestation()
    by_key = {(r.version, r.platform): r for r in records.references}
    assert by_key == {(r.version, r.platform): r for r in references}
    weights = [region.weight for region in by_key["1.2.3", "android"].regions]
    assert weights == [1.0, 0.1, 2.5, 1e-6, 1_000_000.0]
    assert all(type(w) is float for w in weights)
    # The order of the regions is kept: a challenge draws from them by position.
    assert [r.offset for r in by_key["1.2.3", "android"].regions] == [0, 4096, 8192, 2**53 - 1, 16]


async def test_challenges_come_back_exactly(store):
    challenges = [
        challenge(1),
        challenge(2, device_id="device-2", regions=((0, 4),)),
        challenge(0xAB, regions=tuple((i * 100, 16) for i in range(5)), created_at=0),
    ]
    await store.apply([PutChallenge(c) for c in challenges])
    assert (await loaded(store))[2] == sorted(challenges, key=lambda c: c.nonce)


async def test_a_policy_comes_back_exactly(store):
    await store.apply([PutPolicy(POLICY)])
    policy = (await store.load_attestation()).policy
    assert policy == POLICY
    assert policy.sunset_dates == (("1.2.3", "2030-01-31"), ("1.1.0", "2024-02-29"))


async def test_the_default_policy_is_stored_as_a_policy(store):
    await store.apply([PutPolicy(Policy())])
    assert (await store.load_attestation()).policy == Policy()


async def test_every_record_type_in_one_apply(store):
    writes = [
        PutDevice(device("device-1")),
        PutReference(reference()),
        PutChallenge(challenge(1)),
        PutPolicy(POLICY),
    ]
    await store.apply(writes)
    assert await loaded(store) == ([device("device-1")], [reference()], [challenge(1)], POLICY)
    assert await store.load_servers() == []


async def test_a_put_with_the_same_device_id_replaces(store):
    await store.apply([PutDevice(device("device-1")), PutDevice(device("device-2"))])
    newer = device("device-1", build_version="2.0.0", last_seen=NOW_MS + 999, anomaly_flags=())
    await store.apply([PutDevice(newer)])
    assert (await loaded(store))[0] == [newer, device("device-2")]


async def test_a_put_with_the_same_version_and_platform_replaces(store):
    await store.apply(
        [
            PutReference(reference()),
            PutReference(reference(platform="ios")),
            PutReference(reference("2.0.0")),
        ]
    )
    rebuilt = reference(build_hash="rebuilt", regions=(Region(1, 1, "00", 3.0),), size=7)
    await store.apply([PutReference(rebuilt)])
    assert (await loaded(store))[1] == [rebuilt, reference(platform="ios"), reference("2.0.0")]


async def test_a_put_with_the_same_nonce_replaces(store):
    await store.apply([PutChallenge(challenge(1)), PutChallenge(challenge(2))])
    replaced = challenge(1, device_id="device-9", regions=((5, 5),), created_at=NOW_MS + 77)
    await store.apply([PutChallenge(replaced)])
    assert (await loaded(store))[2] == [replaced, challenge(2)]


async def test_a_policy_replaces_the_whole_policy(store):
    await store.apply([PutPolicy(POLICY)])
    lax = Policy(minimum_version="1.0.0", recommended_version="1.0.0")
    await store.apply([PutPolicy(lax)])
    policy = (await store.load_attestation()).policy
    assert policy == lax
    assert policy.blocked_versions == ()
    assert policy.sunset_dates == ()


async def test_deletes_remove_and_unknown_keys_are_fine(store):
    await store.apply(
        [
            PutDevice(device("device-1")),
            PutDevice(device("device-2")),
            PutChallenge(challenge(1)),
            PutChallenge(challenge(2)),
            PutReference(reference()),
            PutPolicy(POLICY),
        ]
    )
    await store.apply([DeleteDevice("device-1"), DeleteChallenge(challenge(2).nonce)])
    expected = ([device("device-2")], [reference()], [challenge(1)], POLICY)
    assert await loaded(store) == expected
    await store.apply(
        [
            DeleteDevice("never-registered"),
            DeleteDevice("device-1"),
            DeleteChallenge("00" * 32),
            DeleteChallenge(challenge(2).nonce),
            DeleteChallenge("not even hex"),
        ]
    )
    assert await loaded(store) == expected


async def test_deleting_a_device_leaves_its_challenges_to_their_own_deletes(store):
    # The state deletes a forgotten device's challenges with their own writes; the store does
    # not cascade behind its back.
    await store.apply([PutDevice(device("device-1")), PutChallenge(challenge(1))])
    await store.apply([DeleteDevice("device-1")])
    assert await loaded(store) == ([], [], [challenge(1)], None)


async def test_writes_of_one_apply_are_applied_in_order(store):
    await store.apply([PutDevice(device("gone")), DeleteDevice("gone")])
    await store.apply([DeleteChallenge(challenge(3).nonce), PutChallenge(challenge(3))])
    last = device("back", last_seen=NOW_MS + 50)
    await store.apply([PutDevice(device("back")), PutDevice(last)])
    await store.apply([PutPolicy(Policy()), PutPolicy(POLICY)])
    assert await loaded(store) == ([last], [], [challenge(3)], POLICY)


async def test_attestation_and_server_records_do_not_mix(store):
    await store.apply(
        [PutServer(server("device-1")), PutDevice(device("device-1")), PutChallenge(challenge(1))]
    )
    assert await store.load_servers() == [server("device-1")]
    assert (await loaded(store))[0] == [device("device-1")]
    await store.apply([DeleteDevice("device-1")])
    assert await store.load_servers() == [server("device-1")]
    assert await loaded(store) == ([], [], [challenge(1)], None)


async def test_load_attestation_after_close_raises(store):
    await store.apply([PutDevice(device("device-1"))])
    await store.aclose()
    with pytest.raises(StoreError):
        await store.load_attestation()
    with pytest.raises(StoreError):
        await store.apply([PutPolicy(POLICY)])


# -- SQLite ------------------------------------------------------------------------------------


async def test_sqlite_attestation_records_survive_a_restart(tmp_path):
    data = tmp_path / "data"
    first = await SqliteStore.open(data)
    try:
        await first.apply(
            [
                PutDevice(device("device-1")),
                PutDevice(device("device-2")),
                PutReference(reference()),
                PutReference(reference(platform="ios")),
                PutChallenge(challenge(1)),
                PutChallenge(challenge(2)),
                PutPolicy(POLICY),
            ]
        )
        await first.apply([DeleteDevice("device-2"), DeleteChallenge(challenge(1).nonce)])
    finally:
        await first.aclose()
    second = await SqliteStore.open(data)
    try:
        assert await loaded(second) == (
            [device("device-1")],
            [reference(), reference(platform="ios")],
            [challenge(2)],
            POLICY,
        )
    finally:
        await second.aclose()


async def test_sqlite_a_policy_survives_a_restart_and_none_stays_none(tmp_path):
    data = tmp_path / "data"
    first = await SqliteStore.open(data)
    try:
        await first.apply([PutDevice(device("device-1"))])
    finally:
        await first.aclose()
    second = await SqliteStore.open(data)
    try:
        assert (await second.load_attestation()).policy is None
        await second.apply([PutPolicy(Policy()), PutPolicy(POLICY)])
    finally:
        await second.aclose()
    third = await SqliteStore.open(data)
    try:
        assert (await third.load_attestation()).policy == POLICY
    finally:
        await third.aclose()


@pytest.mark.parametrize(
    "failing",
    [
        PutDevice(device("too-late", last_seen=2**64)),
        PutChallenge(challenge(9, created_at=-(2**63) - 1)),
        PutReference(reference("9.9.9", regions=(Region(0, 1, "00", float("inf")),))),
        PutDevice(device("\ud800")),
    ],
    ids=[
        "device-last-seen-past-64-bits",
        "challenge-before-64-bits",
        "infinite-weight",
        "surrogate",
    ],
)
async def test_sqlite_a_mixed_batch_is_all_or_nothing(tmp_path, failing):
    store = await SqliteStore.open(tmp_path / "data")
    try:
        before = [
            PutServer(server("vps-1")),
            PutDevice(device("kept")),
            PutReference(reference()),
            PutChallenge(challenge(1)),
            PutPolicy(POLICY),
        ]
        await store.apply(before)
        batch = [
            PutServer(server("vps-2")),
            PutDevice(device("kept", last_seen=NOW_MS + 100)),
            PutDevice(device("new")),
            DeleteDevice("kept"),
            PutReference(reference(platform="ios")),
            PutChallenge(challenge(2)),
            DeleteChallenge(challenge(1).nonce),
            PutPolicy(Policy()),
            failing,
        ]
        with pytest.raises(StoreError):
            await store.apply(batch)
        assert await store.load_servers() == [server("vps-1")]
        assert await loaded(store) == ([device("kept")], [reference()], [challenge(1)], POLICY)
        # The failed transaction left the store usable.
        await store.apply(batch[:-1])
        assert await loaded(store) == (
            [device("new")],
            [reference(), reference(platform="ios")],
            [challenge(2)],
            Policy(),
        )
    finally:
        await store.aclose()
