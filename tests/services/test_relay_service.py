"""The RelayService task with fake peers, on trio's mock clock (autojump): routing, identity,
the rendezvous sweep timer, cleanup on disconnect, and bounded memory."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio

from tests.services.fakes import FakePeer
from zajel.protocol.relay import decode
from zajel.services import LocalAddress
from zajel.services._mailbox import start_service
from zajel.services._peers import Attach, Detach, Inbound
from zajel.services.relay import GetRelayStats, RelayService, RelayStats
from zajel.services.relays import RelayRegistryState
from zajel.services.rendezvous import (
    DAILY_TTL_S,
    HOURLY_TTL_S,
    SWEEP_INTERVAL_S,
    DropEntry,
    PutEntry,
    RendezvousState,
)


@attrs.define
class Relay:
    address: LocalAddress
    service: RelayService

    async def send(self, conn: int, **frame: Any) -> None:
        await self.address.cast(Inbound(conn, decode(json.dumps(frame))))

    async def settle(self) -> RelayStats:
        """Everything sent so far has been handled (the inbox is first in, first out)."""
        return await self.address.call(GetRelayStats())

    async def join(self, conn: int, peer_id: str) -> FakePeer:
        peer = FakePeer()
        await self.address.cast(Attach(conn, peer, "192.0.2.1"))
        await self.send(conn, type="register", peerId=peer_id)
        await self.settle()
        assert peer.take()[0]["type"] == "registered"
        return peer


@pytest.fixture
async def relay(nursery) -> Relay:
    service = RelayService(RelayRegistryState(), RendezvousState(), epoch_ms=lambda: 1234)
    return Relay(start_service(nursery, service), service)


async def test_messages_are_routed_and_answered(autojump_clock, relay):
    peer = await relay.join(1, "alice")
    await relay.send(1, type="heartbeat")
    await relay.send(1, type="ping")
    await relay.send(1, type="get_relays")
    await relay.settle()
    assert peer.take() == [
        {"type": "heartbeat_ack", "timestamp": 1234},
        {"type": "pong"},
        {"type": "relays", "relays": []},
    ]


async def test_matched_peers_hear_before_the_caller_gets_its_result(autojump_clock, relay):
    alice = await relay.join(1, "alice")
    bob = await relay.join(2, "bob")
    await relay.send(1, type="register_rendezvous", hourlyTokens=["t"])
    await relay.send(2, type="register_rendezvous", hourlyTokens=["t"], relayId="r")
    await relay.settle()
    assert alice.take() == [
        {"type": "rendezvous_result", "liveMatches": [], "deadDrops": []},
        {"type": "rendezvous_match", "match": {"peerId": "bob", "relayId": "r"}},
    ]
    assert bob.take() == [
        {"type": "rendezvous_result", "liveMatches": [{"peerId": "alice"}], "deadDrops": []}
    ]


async def test_the_sweep_runs_every_five_minutes_of_trio_time(autojump_clock, relay):
    await relay.join(1, "alice")
    await relay.send(1, type="register_rendezvous", hourlyTokens=["t"])
    await relay.settle()
    first = relay.service.next_deadline()
    assert first - trio.current_time() <= SWEEP_INTERVAL_S
    await trio.sleep(SWEEP_INTERVAL_S + 1)
    assert relay.service.next_deadline() > first
    assert (await relay.settle()).rendezvous["hourlyEntries"] == 1
    await trio.sleep(3 * 3600 + SWEEP_INTERVAL_S)  # the token expires, a sweep removes it
    assert relay.service.rendezvous.sizes() == dict.fromkeys(relay.service.rendezvous.sizes(), 0)


async def test_a_slow_consumer_is_dropped_and_cleaned_up(autojump_clock, relay):
    await relay.join(1, "alice")
    slow = FakePeer(capacity=0)  # refuses every push; answers are never refused
    await relay.address.cast(Attach(2, slow, "192.0.2.1"))
    await relay.send(2, type="register", peerId="bob")
    await relay.send(2, type="register_rendezvous", peerId="bob", hourly_tokens=["t"])
    await relay.settle()
    assert slow.closed == []
    assert slow.types() == ["registered", "rendezvous_result"]
    # alice's match is pushed to bob, whose queue refuses it: bob is a slow consumer.
    await relay.send(1, type="register_rendezvous", peerId="alice", hourly_tokens=["t"])
    stats = await relay.settle()
    assert slow.closed == [1013]
    assert stats.relays["totalPeers"] == 1
    assert stats.rendezvous["hourlyEntries"] == 1  # bob's entry went with him
    await relay.join(3, "bob")  # bob's peerId is free again


async def test_every_frame_of_a_connection_is_reported_handled(autojump_clock, relay):
    # The front end stops reading a connection with too many frames in flight; each frame
    # the service takes must be reported handled, whatever it answers (or not).
    peer = await relay.join(1, "alice")
    before = peer.handled_count
    await relay.send(1, type="ping")
    await relay.send(1, type="bogus")
    await relay.send(1, type="update_load", connectedCount=1)
    await relay.settle()
    assert peer.handled_count - before == 3


async def test_detach_of_unknown_or_unregistered_connections_is_harmless(autojump_clock, relay):
    await relay.address.cast(Detach(99))
    await relay.address.cast(Attach(5, FakePeer(), "192.0.2.1"))
    await relay.address.cast(Detach(5))
    stats = await relay.settle()
    assert stats.relays["totalPeers"] == 0
    assert relay.service.sizes() == {"peers": 0, "ips": 0, "bound": 0, "owners": 0}


async def test_memory_is_bounded_every_map_empty_after_everyone_leaves(autojump_clock, relay):
    peers = 300
    for conn in range(peers):
        await relay.address.cast(Attach(conn, FakePeer(), "192.0.2.1"))
        await relay.send(conn, type="register", peerId=f"peer-{conn}", maxConnections=5)
        await relay.send(
            conn,
            type="register_rendezvous",
            dailyPoints=[f"shared-day-{conn % 7}", f"day-{conn}"],
            hourlyTokens=[f"shared-hour-{conn % 5}", f"hour-{conn}"],
            deadDrop=f"drop-{conn}",
        )
        await relay.send(conn, type="update_load", connectedCount=conn % 5)
    stats = await relay.settle()
    assert stats.relays["totalPeers"] == peers
    # Each peer's own point and token, and the newest 20 at each of the 7 + 5 shared ones.
    assert stats.rendezvous["totalEntries"] == 2 * peers + (7 + 5) * 20
    for conn in range(peers):
        await relay.address.cast(Detach(conn))
    stats = await relay.settle()
    assert stats.relays == {
        "totalPeers": 0,
        "totalCapacity": 0,
        "totalConnected": 0,
        "availableRelays": 0,
    }
    assert set(relay.service.rendezvous.sizes().values()) == {0}
    assert set(relay.service.sizes().values()) == {0}
    assert len(relay.service.relays) == 0


# -- cluster mode: the mirror, restore, and connections lost with their node --------------------


class FakeMirror:
    """Records what the service hands over; never waits."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def record(self, changes: list[Any]) -> None:
        assert changes, "the service hands over only a non-empty journal"
        self.batches.append(list(changes))

    def changes(self) -> list[Any]:
        return [change for batch in self.batches for change in batch]


@pytest.fixture
async def mirrored(nursery) -> tuple[Relay, FakeMirror]:
    mirror = FakeMirror()
    service = RelayService(
        RelayRegistryState(), RendezvousState(), epoch_ms=lambda: 1234, mirror=mirror
    )
    return Relay(start_service(nursery, service), service), mirror


async def test_every_change_of_the_entries_goes_to_the_mirror(autojump_clock, mirrored):
    relay, mirror = mirrored
    await relay.join(1, "alice")
    assert mirror.batches == []  # registering a peer id changes no rendezvous entry
    await relay.send(1, type="register_rendezvous", dailyPoints=["p"], deadDrop="d", relayId="r")
    await relay.send(1, type="register_rendezvous", hourlyTokens=["t"])
    await relay.settle()
    assert mirror.batches == [
        [PutEntry("daily", "p", "alice", "d", "r", 1234 + DAILY_TTL_S * 1000, "192.0.2.1")],
        [PutEntry("hourly", "t", "alice", "", None, 1234 + HOURLY_TTL_S * 1000, "192.0.2.1")],
    ]
    await relay.address.cast(Detach(1))
    await relay.settle()
    assert set(mirror.batches[2]) == {
        DropEntry("daily", "p", "alice"),
        DropEntry("hourly", "t", "alice"),
    }
    # Expiry is the store's own: a sweep hands over nothing.
    await relay.join(2, "bob")
    await relay.send(2, type="register_rendezvous", hourlyTokens=["t"])
    await relay.settle()
    batches = len(mirror.batches)
    await trio.sleep(HOURLY_TTL_S + SWEEP_INTERVAL_S)
    assert (await relay.settle()).rendezvous["totalEntries"] == 0
    assert len(mirror.batches) == batches
    assert relay.service.rendezvous.journal_size == 0


async def test_a_slow_consumer_dropped_mid_request_hands_its_drops_over(autojump_clock, mirrored):
    relay, mirror = mirrored
    await relay.join(1, "alice")
    slow = FakePeer(capacity=0)
    await relay.address.cast(Attach(2, slow, "192.0.2.1"))
    await relay.send(2, type="register", peerId="bob")
    await relay.send(2, type="register_rendezvous", hourlyTokens=["t"])
    await relay.send(1, type="register_rendezvous", hourlyTokens=["t"])
    await relay.settle()
    assert slow.closed == [1013]
    # alice's request stored her entry, then bob's cleanup dropped his: one batch, in order.
    assert mirror.batches[-1] == [
        PutEntry("hourly", "t", "alice", "", None, 1234 + HOURLY_TTL_S * 1000, "192.0.2.1"),
        DropEntry("hourly", "t", "bob"),
    ]


async def test_a_connection_lost_with_its_node_keeps_its_entries(autojump_clock, mirrored):
    relay, mirror = mirrored
    await relay.join(1, "alice")
    await relay.send(
        1, type="register_rendezvous", dailyPoints=["p"], hourlyTokens=["t"], deadDrop="d"
    )
    stats = await relay.settle()
    assert stats.relays["totalPeers"] == 1
    batches = len(mirror.batches)
    await relay.address.cast(Detach(1, lost=True))
    stats = await relay.settle()
    # The relay entry and the identity binding go; the meeting point and token stay.
    assert stats.relays["totalPeers"] == 0
    assert stats.rendezvous["totalEntries"] == 2
    assert relay.service.sizes() == {"peers": 0, "ips": 0, "bound": 0, "owners": 0}
    assert len(mirror.batches) == batches  # nothing changed in the entries
    bob = await relay.join(2, "bob")
    await relay.send(2, type="register_rendezvous", dailyPoints=["p"], hourlyTokens=["t"])
    await relay.settle()
    assert bob.take() == [
        {
            "type": "rendezvous_result",
            "liveMatches": [{"peerId": "alice"}],
            "deadDrops": [{"peerId": "alice", "deadDrop": "d"}],
        }
    ]
    # alice connects again (her peer id is free) and leaves cleanly: her old entries go too.
    await relay.join(3, "alice")
    await relay.address.cast(Detach(3))
    stats = await relay.settle()
    assert stats.rendezvous["totalEntries"] == 2  # bob's
    assert set(mirror.batches[-1]) == {
        DropEntry("daily", "p", "alice"),
        DropEntry("hourly", "t", "alice"),
    }


async def test_entries_kept_after_a_lost_connection_expire_with_their_ttl(autojump_clock, relay):
    await relay.join(1, "alice")
    await relay.send(1, type="register_rendezvous", hourlyTokens=["t"])
    await relay.settle()
    await relay.address.cast(Detach(1, lost=True))
    assert (await relay.settle()).rendezvous["hourlyEntries"] == 1
    await trio.sleep(HOURLY_TTL_S + SWEEP_INTERVAL_S)
    assert set(relay.service.rendezvous.sizes().values()) == {0}
    assert set(relay.service.sizes().values()) == {0}


async def test_a_lost_detach_of_an_older_connection_never_touches_a_newer_one(
    autojump_clock, relay
):
    await relay.join(1, "alice")
    await relay.address.cast(Detach(1, lost=True))
    await relay.join(2, "alice")
    await relay.address.cast(Detach(1, lost=True))  # again: harmless
    stats = await relay.settle()
    assert stats.relays["totalPeers"] == 1


async def test_restore_before_the_task_starts(autojump_clock, nursery):
    mirror = FakeMirror()
    service = RelayService(
        RelayRegistryState(),
        RendezvousState(drops_per_point=1),
        epoch_ms=lambda: 1_000_000,
        mirror=mirror,
    )
    now = trio.current_time()
    loaded = service.restore(
        [
            PutEntry("daily", "p", "old", "old-drop", None, 1_000_000 + 60_000, "192.0.2.9"),
            PutEntry("daily", "p", "alice", "a-drop", "r", 1_000_000 + 60_000, "192.0.2.9"),
            PutEntry("daily", "q", "gone", "x", None, 1_000_000, "192.0.2.9"),
        ],
        now,
    )
    assert loaded == 2
    # One peer per point here: the older entry gave way, and the mirror is told to drop it.
    assert mirror.batches == [[DropEntry("daily", "p", "old")]]
    relay = Relay(start_service(nursery, service), service)
    assert (await relay.settle()).rendezvous["dailyEntries"] == 1
    bob = await relay.join(1, "bob")
    await relay.send(1, type="register_rendezvous", dailyPoints=["p"])
    await relay.settle()
    assert bob.take()[0]["deadDrops"] == [{"peerId": "alice", "deadDrop": "a-drop", "relayId": "r"}]
    await trio.sleep(60)  # alice's entry expires 60 s after the restore
    assert (await relay.settle()).rendezvous["dailyEntries"] == 1  # only bob's now


async def test_restore_with_now_ms_given_and_without_a_mirror(autojump_clock):
    service = RelayService(RelayRegistryState(), RendezvousState(), epoch_ms=lambda: 0)
    put = PutEntry("hourly", "t", "alice", "", None, 5_000, "192.0.2.1")
    assert service.restore([put], 100.0, now_ms=4_000) == 1
    assert service.rendezvous.statistics(100.5)["hourlyEntries"] == 1
    assert service.rendezvous.statistics(101.0)["hourlyEntries"] == 0
    assert service.rendezvous.journal_size == 0
