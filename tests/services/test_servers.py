"""ServerRegistry (docs/protocol/servers.md): ``ServerRegistryState`` on its own with explicit
epoch milliseconds, and the durable ``ServerRegistry`` service under trio's mock clock."""

from __future__ import annotations

import json

import pytest
import trio

from zajel import bootstrap, crypto
from zajel.clock import MAX_STEP_MS, WallClock, epoch_ms
from zajel.config import Config, ConfigError
from zajel.protocol import errors
from zajel.protocol.frames import encode
from zajel.protocol.servers import (
    MAX_SERVERS,
    Counters,
    CounterUpdate,
    ListServers,
    RegisterServer,
    ServerHeartbeat,
    UnregisterServer,
)
from zajel.services._durable import start_durable_service
from zajel.services.servers import (
    SWEEP_INTERVAL_S,
    GetServerStats,
    HeartbeatAccepted,
    Registered,
    ServerRegistry,
    ServerRegistryState,
    SignedList,
    Unregistered,
)
from zajel.storage import DeleteServer, MemoryStore, PutServer, SqliteStore

MINUTE_MS = 60_000
T0 = 1_700_000_000_000  # epoch ms of the first request in the state tests


def register(server_id: str, **counters: int) -> RegisterServer:
    return RegisterServer(
        server_id,
        f"https://{server_id}.example.com",
        f"key-{server_id}",
        "eu",
        Counters(**counters),
    )


def heartbeat(server_id: str, **counters: int) -> ServerHeartbeat:
    return ServerHeartbeat(server_id, CounterUpdate(**counters))


def ids(entries) -> list[str]:
    return [entry.server_id for entry in entries]


# -- ServerRegistryState -------------------------------------------------------------------


def test_register_makes_a_live_entry_and_one_write():
    state = ServerRegistryState()
    entry, writes = state.register(register("a", connections=3), T0)
    assert entry.server_id == "a"
    assert entry.counters == Counters(connections=3)
    assert (entry.registered_at, entry.last_seen) == (T0, T0)
    assert writes == [PutServer(entry)]
    assert state.live(T0) == [entry]


def test_listed_at_4_minutes_and_gone_at_6():
    state = ServerRegistryState()
    state.register(register("a"), T0)
    assert ids(state.live(T0 + 4 * MINUTE_MS)) == ["a"]
    assert ids(state.live(T0 + 5 * MINUTE_MS - 1)) == ["a"]
    assert state.live(T0 + 5 * MINUTE_MS) == []
    assert state.live(T0 + 6 * MINUTE_MS) == []


def test_a_heartbeat_every_60_s_keeps_an_entry_for_10_minutes():
    state = ServerRegistryState()
    state.register(register("a"), T0)
    for minute in range(1, 11):
        entry, writes = state.heartbeat(heartbeat("a"), T0 + minute * MINUTE_MS)
        assert entry.last_seen == T0 + minute * MINUTE_MS
        assert writes == [PutServer(entry)]
    assert ids(state.live(T0 + 14 * MINUTE_MS)) == ["a"]
    assert state.live(T0 + 15 * MINUTE_MS) == []


def test_heartbeat_updates_only_the_counters_it_carries():
    state = ServerRegistryState()
    state.register(register("a", connections=1, active_codes=7), T0)
    entry, writes = state.heartbeat(heartbeat("a", connections=9), T0 + 1000)
    assert writes == [PutServer(entry)]
    (write,) = writes
    assert isinstance(write, PutServer)
    assert write.entry.counters == Counters(connections=9, active_codes=7)
    assert write.entry.last_seen == T0 + 1000
    assert write.entry.registered_at == T0


def test_live_json_is_the_compact_json_of_the_live_entries_but_the_one_excluded():
    state = ServerRegistryState()
    state.register(register("a", connections=1), T0)
    b, _ = state.register(register("b"), T0 + 1)
    state.register(register("old"), T0 - 5 * MINUTE_MS)
    a, _ = state.heartbeat(heartbeat("a", connections=2), T0 + 2)
    assert state.live_json(T0 + 3) == encode([a.to_json(), b.to_json()])
    assert state.live_json(T0 + 3, excluding="a") == encode([b.to_json()])
    assert state.live_json(T0 + 3, excluding="b") == encode([a.to_json()])
    assert ServerRegistryState().live_json(T0) == "[]"


@pytest.mark.parametrize("age_ms", [5 * MINUTE_MS, 6 * MINUTE_MS])
def test_heartbeat_of_an_unknown_or_expired_entry_is_not_registered(age_ms):
    state = ServerRegistryState()
    state.register(register("a"), T0)
    for server_id, now in (("ghost", T0), ("a", T0 + age_ms)):
        reply, writes = state.heartbeat(heartbeat(server_id), now)
        assert reply == errors.ProtocolError(errors.NOT_FOUND, "Server not registered")
        assert writes == []


def test_re_registering_replaces_the_entry():
    state = ServerRegistryState()
    state.register(register("a", connections=5), T0)
    replacement = RegisterServer("a", "wss://new.example.com", "new-key", "us", Counters())
    entry, _ = state.register(replacement, T0 + 1000)
    assert state.live(T0 + 1000) == [entry]
    assert (entry.endpoint, entry.public_key, entry.region) == (
        "wss://new.example.com",
        "new-key",
        "us",
    )
    assert entry.counters == Counters()
    assert entry.registered_at == T0 + 1000


def test_unregister_is_idempotent():
    state = ServerRegistryState()
    state.register(register("a"), T0)
    assert state.unregister("a") == [DeleteServer("a")]
    assert state.unregister("a") == []
    assert state.live(T0) == []


def test_the_cap_refuses_a_new_id_and_lets_an_existing_one_re_register():
    state = ServerRegistryState()
    for index in range(MAX_SERVERS):
        state.register(register(f"s{index}"), T0)
    reply, writes = state.register(register("one-too-many"), T0 + 1)
    assert reply == errors.ProtocolError(errors.REGISTRY_FULL, "Server registry full")
    assert writes == []
    entry, writes = state.register(register("s500", connections=2), T0 + 2)
    assert entry.counters.connections == 2
    assert writes == [PutServer(entry)]
    assert len(state.live(T0 + 2)) == MAX_SERVERS


def test_at_the_cap_expired_entries_make_room():
    state = ServerRegistryState()
    state.register(register("old"), T0)
    for index in range(MAX_SERVERS - 1):
        state.register(register(f"s{index}"), T0 + 4 * MINUTE_MS)
    entry, writes = state.register(register("new"), T0 + 5 * MINUTE_MS)
    assert writes == [DeleteServer("old"), PutServer(entry)]
    assert len(state.live(T0 + 5 * MINUTE_MS)) == MAX_SERVERS


def test_sweep_deletes_only_entries_that_are_not_live():
    state = ServerRegistryState()
    state.register(register("old"), T0)
    state.register(register("young"), T0 + 2 * MINUTE_MS)
    assert state.sweep(T0 + 5 * MINUTE_MS) == [DeleteServer("old")]
    assert state.statistics(T0 + 5 * MINUTE_MS) == {"totalServers": 1, "liveServers": 1}
    assert state.sweep(T0 + 5 * MINUTE_MS) == []


def test_load_orders_by_registration():
    state = ServerRegistryState()
    first, _ = state.register(register("b"), T0)
    second, _ = state.register(register("a"), T0 + 1)
    fresh = ServerRegistryState()
    fresh.load([second, first])
    assert ids(fresh.live(T0 + 2)) == ["b", "a"]


# -- the ServerRegistry service --------------------------------------------------------------

SEED = bytes(range(32))


def registry() -> ServerRegistry:
    return ServerRegistry(ServerRegistryState(), crypto.signing_key(SEED))


async def started(nursery, store, service=None):
    service = service or registry()
    return service, await start_durable_service(nursery, service, store)


async def test_signed_list_verifies_with_the_public_key(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        service, address = await started(nursery, store)
        reply = await address.call(register("a"))
        assert isinstance(reply, Registered)
        signed = await address.call(ListServers())
        assert isinstance(signed, SignedList)
        now_ms = service._epoch_ms(trio.current_time())
        public_key = crypto.public_key_b64(crypto.signing_key(SEED))
        servers = bootstrap.verify_server_list(
            signed.body, signed.signature, public_key, now_ms=now_ms
        )
        assert servers == [reply.entry.to_json()]
        body = json.loads(signed.body)
        assert list(body) == ["servers", "timestamp"]
        assert body["timestamp"] == now_ms
        assert signed.body == encode(body).encode()  # exactly the compact JSON encoding
        nursery.cancel_scope.cancel()


async def test_listed_at_4_minutes_gone_at_6_and_the_sweep_deletes_the_row(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        _, address = await started(nursery, store)
        await address.call(register("a"))
        await trio.sleep(4 * 60)
        assert ids_in(await address.call(ListServers())) == ["a"]
        assert set(store.servers) == {"a"}
        await trio.sleep(2 * 60)  # 6 min: past the TTL, and the first sweep ran at 5 min
        assert ids_in(await address.call(ListServers())) == []
        assert store.servers == {}
        nursery.cancel_scope.cancel()


async def test_heartbeats_every_60_s_keep_a_server_listed_for_10_minutes(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        _, address = await started(nursery, store)
        await address.call(register("a"))
        await address.call(register("b"))
        for _ in range(10):
            await trio.sleep(60)
            reply = await address.call(heartbeat("a", connections=4))
            assert isinstance(reply, HeartbeatAccepted)
        assert json.loads(reply.peers_json) == []  # "b" stopped beating and is gone
        assert ids_in(await address.call(ListServers())) == ["a"]
        assert set(store.servers) == {"a"}  # "b" went stale and was swept from the store
        assert store.servers["a"].counters.connections == 4
        nursery.cancel_scope.cancel()


async def test_the_sweep_runs_every_5_minutes(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        _, address = await started(nursery, store)
        await trio.sleep(SWEEP_INTERVAL_S - 30)
        await address.call(register("a"))  # at 4:30
        await trio.sleep(60)  # 5:30: the first sweep (5:00) found "a" live
        assert set(store.servers) == {"a"}
        await trio.sleep(SWEEP_INTERVAL_S)  # 10:30: the second sweep (10:00) deleted it
        assert store.servers == {}
        nursery.cancel_scope.cancel()


async def test_the_cap_answers_503_and_an_existing_id_re_registers(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        _, address = await started(nursery, store)
        for index in range(MAX_SERVERS):
            assert isinstance(await address.call(register(f"s{index}")), Registered)
        full = await address.call(register("one-too-many"))
        assert full == errors.ProtocolError(errors.REGISTRY_FULL, "Server registry full")
        assert isinstance(await address.call(register("s999", connections=1)), Registered)
        assert await address.call(GetServerStats()) == {
            "totalServers": MAX_SERVERS,
            "liveServers": MAX_SERVERS,
        }
        assert len(store.servers) == MAX_SERVERS
        assert "one-too-many" not in store.servers
        nursery.cancel_scope.cancel()


async def test_unregister_deletes_from_the_store(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        _, address = await started(nursery, store)
        await address.call(register("a"))
        assert await address.call(UnregisterServer("a")) == Unregistered()
        assert await address.call(UnregisterServer("a")) == Unregistered()
        assert store.servers == {}
        nursery.cancel_scope.cancel()


async def test_state_comes_back_from_the_store_after_a_restart(autojump_clock):
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        _, address = await started(nursery, store)
        await address.call(register("a"))
        await address.call(register("b"))
        await address.call(UnregisterServer("b"))
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        _, address = await started(nursery, store)
        assert ids_in(await address.call(ListServers())) == ["a"]
        nursery.cancel_scope.cancel()


async def test_the_sweep_deletes_stale_rows_from_the_sqlite_store(tmp_path, clock):
    # A real store runs on worker threads, so the mock clock is jumped by hand: an autojump
    # clock would jump while a commit waits for its thread.
    store = await SqliteStore.open(tmp_path / "data")
    try:
        async with trio.open_nursery() as nursery:
            _, address = await started(nursery, store)
            await address.call(register("stale"))
            clock.jump(4 * 60)
            await address.call(register("fresh"))
            assert {entry.server_id for entry in await store.load_servers()} == {"stale", "fresh"}
            clock.jump(60 + 1)  # 5:01 after the start: the sweep is due
            await address.call(GetServerStats())  # wakes the service; the sweep runs first
            assert [entry.server_id for entry in await store.load_servers()] == ["fresh"]
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


def test_a_development_registry_without_a_key_makes_an_ephemeral_one_and_logs_it(caplog):
    caplog.set_level("WARNING", logger="zajel.servers")
    first = ServerRegistry.from_config(Config(env="development"))
    second = ServerRegistry.from_config(Config(env="development"))
    assert first.signing_key.verify_key != second.signing_key.verify_key
    public_key = crypto.public_key_b64(first.signing_key)
    assert any(getattr(r, "context", {}).get("public_key") == public_key for r in caplog.records)


def test_a_configured_key_is_used():
    config = Config(env="production", bootstrap_signing_key=SEED.hex())
    registry = ServerRegistry.from_config(config)
    assert registry.signing_key.verify_key == crypto.signing_key(SEED).verify_key


@pytest.mark.parametrize("env", ["production", "qa"])
def test_no_key_outside_development_is_refused(env):
    with pytest.raises(ConfigError, match="ZAJEL_BOOTSTRAP_SIGNING_KEY"):
        ServerRegistry.from_config(Config(env=env))


def test_wall_clock_follows_trios_clock():
    clock = WallClock(anchor_ms=T0, anchor=100.0)
    assert clock.epoch_ms(100.0) == T0
    assert clock.epoch_ms(100.5) == T0 + 500
    assert clock.epoch_ms(100.0 + 48 * 3600) == T0 + 48 * 3600 * 1000


def test_wall_clock_anchors_again_only_after_a_step_of_the_wall_clock():
    clock = WallClock(anchor_ms=T0, anchor=100.0)
    at_200 = T0 + 100_000
    assert clock.resynced(200.0, wall_ms=at_200 + MAX_STEP_MS) is clock  # drift, not a step
    assert clock.resynced(200.0, wall_ms=at_200 - MAX_STEP_MS) is clock
    stepped = clock.resynced(200.0, wall_ms=at_200 + 3_600_000)  # the wall clock jumped 1 h
    assert stepped.epoch_ms(200.0) == at_200 + 3_600_000
    assert stepped.epoch_ms(201.0) == at_200 + 3_601_000
    back = clock.resynced(200.0, wall_ms=at_200 - 120_000)
    assert back.epoch_ms(200.0) == at_200 - 120_000


async def test_under_a_mock_clock_the_wall_clock_is_never_read_again(autojump_clock):
    clock = WallClock.start()
    assert clock.follows_wall_clock is False
    assert clock.resynced(trio.current_time() + 3600, wall_ms=0) is clock


async def test_under_the_system_clock_the_wall_clock_is_followed():
    assert WallClock.start().follows_wall_clock is True


async def test_the_sweep_follows_a_stepped_wall_clock(autojump_clock, caplog):
    caplog.set_level("WARNING", logger="zajel.servers")
    service = ServerRegistry(
        ServerRegistryState(),
        crypto.signing_key(SEED),
        wall_clock=WallClock(anchor_ms=0, anchor=trio.current_time()),  # 1970: far from the wall
    )
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        _, address = await started(nursery, store, service)
        await address.call(register("a"))
        assert store.servers["a"].registered_at < 1000
        await trio.sleep(SWEEP_INTERVAL_S + 1)
        reply = await address.call(register("b"))
        assert abs(reply.entry.registered_at - epoch_ms()) < 60_000
        assert "wall clock stepped" in caplog.text
        nursery.cancel_scope.cancel()


def ids_in(signed: SignedList) -> list[str]:
    return [server["serverId"] for server in json.loads(signed.body)["servers"]]
