"""``RedisStore`` beyond the store contract (docs/cluster.md, "Fencing"): fenced writes, Redis
going away, the schema version, and the layout other tools read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import coredis
import pytest

from tests._redis import RedisServer, coredis_failed_connections
from tests.storage.test_attestation_store import (
    POLICY,
    challenge,
    device,
    loaded,
    reference,
    sort_records,
)
from tests.storage.test_store import by_id, entry
from zajel.cluster.fence import Fence, Fenced, lease_key
from zajel.protocol.attestation import Policy, Region
from zajel.storage import (
    DeleteChallenge,
    DeleteDevice,
    DeleteServer,
    FencedStoreError,
    MemoryStore,
    PutChallenge,
    PutDevice,
    PutPolicy,
    PutReference,
    PutServer,
    RedisStore,
    StoreError,
    Write,
)
from zajel.storage.redis import MIGRATIONS, RedisMigration

LEASE = lease_key("servers")
MINE = Fence(LEASE, "node-a:1")

EVERY_KIND: list[Write] = [
    PutServer(entry("vps-1")),
    PutDevice(device("device-1")),
    PutReference(reference()),
    PutChallenge(challenge(1)),
    PutPolicy(POLICY),
]
BATCH: list[Write] = [
    PutServer(entry("vps-2")),
    DeleteServer("vps-1"),
    PutDevice(device("device-2")),
    DeleteDevice("device-1"),
    PutReference(reference(platform="ios")),
    PutChallenge(challenge(2)),
    DeleteChallenge(challenge(1).nonce),
    PutPolicy(Policy()),
]


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:
    """A client of the empty redis-server, open for the test."""
    async with coredis.Redis.from_url(redis.url) as opened:
        yield opened


async def snapshot(client: coredis.Redis[bytes]) -> dict[bytes, Any]:
    """Every key of the server and what it holds."""
    found: dict[bytes, Any] = {}
    for key in sorted(await client.keys("*")):
        if await client.type(key) in ("hash", b"hash"):
            found[key] = await client.hgetall(key)
        else:
            found[key] = await client.get(key)
    return found


async def everything(store: RedisStore) -> tuple[Any, ...]:
    return (by_id(await store.load_servers()), *await loaded(store))


async def memory_after(*batches: list[Write]) -> tuple[Any, ...]:
    """What the contract says a store holds after committing ``batches``."""
    memory = MemoryStore()
    for batch in batches:
        memory.apply_nowait(batch)
    return (by_id(await memory.load_servers()), *sort_records(await memory.load_attestation()))


# -- fencing -----------------------------------------------------------------------------------


async def test_a_fenced_apply_with_the_current_token_applies(client):
    await client.set(LEASE, MINE.token)
    store = await RedisStore.open(client, fence=MINE)
    await store.apply(EVERY_KIND)
    await store.apply(BATCH)
    assert await everything(store) == await memory_after(EVERY_KIND, BATCH)


@pytest.mark.parametrize(
    "lease", ["node-b:2", "node-a:0", None], ids=["new-owner", "older-epoch", "expired"]
)
async def test_a_fenced_apply_with_a_stale_token_is_refused_as_a_whole(client, lease):
    unfenced = await RedisStore.open(client)
    await unfenced.apply(EVERY_KIND)
    if lease is not None:
        await client.set(LEASE, lease)
    before = await snapshot(client)
    store = RedisStore(client, fence=MINE)
    with pytest.raises(FencedStoreError) as refused:
        await store.apply(BATCH)
    assert isinstance(refused.value, StoreError)
    assert isinstance(refused.value, Fenced)
    assert await snapshot(client) == before
    assert await everything(store) == await memory_after(EVERY_KIND)
    with pytest.raises(FencedStoreError):
        await store.probe_write()
    assert await snapshot(client) == before
    await store.apply([])  # nothing to commit sends nothing: no fence to check


async def test_a_new_fence_writes_after_a_takeover(client):
    await client.set(LEASE, MINE.token)
    old_owner = await RedisStore.open(client, fence=MINE)
    await old_owner.apply([PutServer(entry("vps-1"))])
    await client.set(LEASE, "node-b:2")  # node-b took the lease over
    new_owner = old_owner.with_fence(Fence(LEASE, "node-b:2"))
    await new_owner.apply([PutServer(entry("vps-2"))])
    await new_owner.probe_write()
    with pytest.raises(FencedStoreError):
        await old_owner.apply([DeleteServer("vps-2")])
    assert old_owner.fence == MINE
    assert by_id(await old_owner.load_servers()) == [entry("vps-1"), entry("vps-2")]


async def test_a_write_probe_changes_no_record(client):
    await client.set(LEASE, MINE.token)
    store = await RedisStore.open(client, fence=MINE)
    await store.apply(EVERY_KIND)
    await store.probe_write()
    assert await client.get("zajel:probe") == MINE.token.encode()
    assert await everything(store) == await memory_after(EVERY_KIND)


# -- failures ----------------------------------------------------------------------------------


async def failure(call: Callable[[], Awaitable[object]]) -> tuple[type, type]:
    """The types of the error ``call`` raises and of its cause (the types only: the exception
    would keep the failed connections alive past ``coredis_failed_connections``)."""
    try:
        await call()
    except Exception as exc:
        return type(exc), type(exc.__cause__)
    raise AssertionError("no error")


async def test_redis_down_is_a_store_error_and_the_store_works_once_it_is_back(redis, client):
    store = await RedisStore.open(client)
    await store.apply([PutServer(entry("vps-1"))])
    redis.stop()
    with coredis_failed_connections():
        failures = [
            await failure(call)
            for call in (
                store.load_servers,
                store.load_attestation,
                lambda: store.apply(EVERY_KIND),
                store.ping,
                store.probe_write,
            )
        ]
    assert failures == [(StoreError, coredis.exceptions.ConnectionError)] * 5
    redis.start()
    # The test server keeps nothing across a restart; the store loads its scripts again.
    await store.ping()
    assert await store.load_servers() == []
    await store.apply([PutServer(entry("vps-2"))])
    await store.probe_write()
    assert await store.load_servers() == [entry("vps-2")]


async def test_a_record_json_cannot_hold_is_refused_and_nothing_is_applied(client):
    store = await RedisStore.open(client)
    await store.apply(EVERY_KIND)
    before = await snapshot(client)
    infinite = reference("9.9.9", regions=(Region(0, 1, "00", float("inf")),))
    for failing in (PutReference(infinite), PutDevice(device("\ud800"))):
        with pytest.raises(StoreError):
            await store.apply([*BATCH, failing])
        assert await snapshot(client) == before


async def test_a_key_of_another_type_refuses_the_whole_apply(client):
    store = await RedisStore.open(client)
    await client.set("zajel:att:challenges", "not a hash")
    with pytest.raises(StoreError, match="zajel:att:challenges holds a string, not a hash"):
        await store.apply([PutServer(entry("vps-1")), PutChallenge(challenge(1))])
    assert await client.exists(["zajel:servers"]) == 0


async def test_a_record_that_does_not_read_back_is_a_store_error(client):
    store = await RedisStore.open(client)
    await client.hset("zajel:servers", {"vps-1": "{not json"})
    with pytest.raises(StoreError, match="cannot read"):
        await store.load_servers()
    await client.hset("zajel:att:devices", {"device-1": '{"device_id": "device-1"}'})
    with pytest.raises(StoreError, match="cannot read"):
        await store.load_attestation()


async def test_close_leaves_the_client_open(client):
    store = await RedisStore.open(client)
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.ping()
    assert await client.ping() == b"PONG"


# -- schema ------------------------------------------------------------------------------------


async def test_open_sets_the_schema_of_a_new_store_and_keeps_it(client):
    await RedisStore.open(client)
    assert await client.get("zajel:schema") == b"1"
    await RedisStore.open(client)
    assert await client.get("zajel:schema") == str(MIGRATIONS[-1].version).encode()


async def test_a_newer_schema_is_refused_and_left_alone(client):
    await client.set("zajel:schema", "2")
    await client.hset("zajel:servers", {"vps-1": "written by a newer server"})
    before = await snapshot(client)
    with pytest.raises(StoreError, match="store schema 2 is newer than this server's 1"):
        await RedisStore.open(client)
    assert await snapshot(client) == before


async def test_a_schema_that_is_not_a_number_is_refused(client):
    await client.set("zajel:schema", "one")
    with pytest.raises(StoreError, match="not a version"):
        await RedisStore.open(client)


async def test_migrations_run_in_order_and_once(client):
    await (await RedisStore.open(client)).apply([PutServer(entry("old")), PutServer(entry("kept"))])
    drop_old = RedisMigration(
        2, "test: drop the server 'old'", "redis.call('HDEL', servers, 'old')"
    )
    store = await RedisStore.open(client, migrations=(*MIGRATIONS, drop_old))
    assert await store.load_servers() == [entry("kept")]
    assert await client.get("zajel:schema") == b"2"
    await store.apply([PutServer(entry("old"))])
    await RedisStore.open(client, migrations=(*MIGRATIONS, drop_old))  # already at 2: no re-run
    assert by_id(await store.load_servers()) == [entry("kept"), entry("old")]
    with pytest.raises(StoreError, match="newer"):
        await RedisStore.open(client)


# -- layout ------------------------------------------------------------------------------------


async def test_writes_read_back_through_another_client(redis, client):
    store = await RedisStore.open(client)
    more: list[Write] = [PutDevice(device("device-1", last_seen=2**63 - 1)), PutPolicy(POLICY)]
    await store.apply(EVERY_KIND)
    await store.apply(BATCH)
    await store.apply(more)
    async with coredis.Redis.from_url(redis.url) as other:
        reloaded = await RedisStore.open(other)
        assert await everything(reloaded) == await memory_after(EVERY_KIND, BATCH, more)


async def test_records_are_json_with_the_fields_of_the_sqlite_store(client):
    store = await RedisStore.open(client)
    await store.apply(EVERY_KIND)
    assert sorted(await client.keys("*")) == [
        b"zajel:att:challenges",
        b"zajel:att:devices",
        b"zajel:att:policy",
        b"zajel:att:references",
        b"zajel:schema",
        b"zajel:servers",
    ]
    server = json.loads((await client.hgetall("zajel:servers"))[b"vps-1"])
    assert server == {
        "server_id": "vps-1",
        "endpoint": "wss://vps-1.example.com/ws",
        "public_key": "key",
        "region": "eu-west",
        "connections": 1,
        "relay_connections": 2,
        "signaling_connections": 3,
        "active_codes": 4,
        "registered_at": entry("vps-1").registered_at,
        "last_seen": entry("vps-1").last_seen,
    }
    devices = await client.hgetall("zajel:att:devices")
    assert json.loads(devices[b"device-1"]) == device("device-1").to_record()
    references = await client.hgetall("zajel:att:references")
    assert json.loads(references[b'["1.2.3","android"]']) == reference().to_json()
    challenges = await client.hgetall("zajel:att:challenges")
    assert json.loads(challenges[challenge(1).nonce.encode()]) == challenge(1).to_record()
    assert json.loads(await client.get("zajel:att:policy")) == POLICY.to_json()


async def test_a_prefix_keeps_stores_apart(client):
    one = await RedisStore.open(client, prefix="one:")
    two = await RedisStore.open(client, prefix="two:")
    await one.apply(EVERY_KIND)
    await two.apply([PutServer(entry("vps-9"))])
    assert await everything(one) == await memory_after(EVERY_KIND)
    assert await two.load_servers() == [entry("vps-9")]
    assert await loaded(two) == ([], [], [], None)
    assert all(key.startswith((b"one:", b"two:")) for key in await client.keys("*"))
