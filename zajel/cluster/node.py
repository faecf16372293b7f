"""One node of a cluster: its inbox, the messages it sends other nodes, its leases.

Every node is an *edge* (it serves clients) and may be the *owner* of some services
(docs/cluster.md). Invariants:

- **Ownership.** A service runs on the node whose token (``"<node>:<epoch>"``) its lease key
  holds, and on no other. ``owners`` is what this node last read of every lease; a service this
  node runs is in ``_running`` under the token it was started with, and is stopped as soon as
  the lease holds another value, or once ``lease_ms`` has passed since the last renewal this
  node saw succeed (it can no longer know it is the owner; its Redis writes are fenced anyway).
- **Connections.** A connection this node serves is attached to each service of its endpoint
  under the owner token current at the time (``_tracked``). When a service's token changes,
  every connection attached under the old one is closed with 1012 (service restart): the state
  it registered is gone with the old owner. A connection of another node, attached to a service
  this node owns, is a ``RemotePeer``, listed per edge node in ``_remote``; when that edge's
  heartbeat key expires, each is detached with ``lost=True`` (state that outlives a node, the
  rendezvous entries, is kept).
- **The hop.** Messages to a node are queued per node and sent by one task as one PUBLISH per
  node per round (``_flush``), in the order they were queued: a connection's answers, pushes,
  ``handled`` marks and close arrive in the order the owner made them. A multicast to many
  connections of one edge crosses once, with the list of its connections.
- **Calls** carry a deadline (``call_timeout_ms``): a reply that does not come in time raises
  ``ClusterUnavailable``, never hangs. Nothing between nodes is pickled: ``zajel.cluster.wire``.
- **Degraded.** While Redis cannot be reached (the keeper's last call failed, or the hop's
  connections are down), ``degraded`` is true: new work is refused with ``ClusterUnavailable``;
  the node recovers by itself when Redis answers again.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import coredis
import orjson
import trio

from zajel.cluster import wire
from zajel.cluster.fence import PREFIX, lease_key
from zajel.cluster.link import (
    LinkError,
    Publisher,
    RedisAddress,
    Subscriber,
    connect,
)
from zajel.logs import context
from zajel.protocol.frames import encode
from zajel.protocol.signaling import Relay
from zajel.services._mailbox import BUSY_WAIT_S, Batch, Busy, Envelope, LocalAddress, Unavailable
from zajel.services._peers import (
    CLOSE_TRY_AGAIN_LATER,
    Attach,
    ConnId,
    Detach,
    Identity,
    Inbound,
    Peer,
)
from zajel.services.signaling import peer_not_found, relayed

log = logging.getLogger("zajel.cluster")

# docs/cluster.md, "What clients see": the close code of a connection whose owner state is gone.
CLOSE_SERVICE_RESTART: Final = 1012
# How long a node's heartbeat key lives; a node that misses it this long counts as gone.
NODE_TTL_MS: Final = 3_000
# Latency samples kept for the hop's percentiles.
LATENCY_SAMPLES: Final = 2048
# Queued messages to one node past which ``cast_nowait`` refuses (the caller waits instead).
MAX_QUEUED_OPS: Final = 20_000
RECONNECT_DELAY_S: Final = 0.5
LEAVE_TIMEOUT_S: Final = 2.0
# The error of an ``r`` op for a call the owner refused because the service's inbox stayed full.
BUSY_REPLY: Final = "busy"
# A flush round that sent at least BUSY_OPS ops makes the next one wait ``linger_ms`` for more.
BUSY_OPS: Final = 8
# Identities whose wire text an edge keeps (``Node.identity_text``); past it, it starts again.
MAX_IDENTITY_TEXTS: Final = 8192
# A status entry (``zajel cluster status``) whose heartbeat is this old is removed.
FORGET_NODE_MS: Final = 3_600_000

Owner = str  # a lease token: "<node id>:<epoch>"


class ClusterUnavailable(Unavailable):
    """The cluster cannot serve this now: Redis is unreachable, a service has no owner, or a
    call between nodes missed its deadline (docs/cluster.md, "What clients see")."""


async def _put(address: LocalAddress, envelope: Envelope) -> None:
    """Put ``envelope`` into ``address``'s inbox without a scheduler round trip while it has
    room; a full inbox makes this node's inbox wait (Redis then holds what follows)."""
    try:
        address.send_nowait(envelope)
    except trio.WouldBlock:
        await address.send(envelope)


async def _put_within(address: LocalAddress, envelope: Envelope, seconds: float) -> bool:
    """``_put``, giving up after ``seconds`` of a full inbox; whether ``envelope`` went in."""
    try:
        address.send_nowait(envelope)
    except trio.WouldBlock:
        with trio.move_on_after(seconds):
            await address.send(envelope)
            return True
        return False
    return True


async def _hand_in(address: LocalAddress, requests: list[Inbound]) -> None:
    """Put ``requests`` into ``address``'s inbox as one envelope."""
    await _put(address, Envelope(requests[0] if len(requests) == 1 else Batch(tuple(requests))))


def owner_node(token: Owner) -> str:
    """The instance (``"<node id>@<number>"``) a lease token names."""
    return token.rpartition(":")[0]


def node_of(instance: str) -> str:
    """The node id of an instance."""
    return instance.rpartition("@")[0] or instance


@attrs.define
class HopStats:
    """Counters of the cross-node hop (``/stats`` and ``/metrics``)."""

    messages_out: int = 0
    bytes_out: int = 0
    batches_out: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    batches_in: int = 0
    calls: int = 0
    call_timeouts: int = 0
    # Signaling frames relayed by routes (docs/cluster.md, "Direct relay"): sent by this
    # node's routes, delivered to a connection of this node (by its own routes or another
    # node's), and refused here (the route was no longer right: ``peer_not_found``).
    direct_out: int = 0
    direct_in: int = 0
    direct_refused: int = 0
    # Calls from other nodes refused here because the service's inbox stayed full.
    busy_refused: int = 0
    latencies_ms: collections.deque[float] = attrs.field(
        factory=lambda: collections.deque(maxlen=LATENCY_SAMPLES)
    )

    def snapshot(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def percentile(share: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)

        return {
            "messages_out": self.messages_out,
            "bytes_out": self.bytes_out,
            "batches_out": self.batches_out,
            "messages_in": self.messages_in,
            "bytes_in": self.bytes_in,
            "batches_in": self.batches_in,
            "calls": self.calls,
            "call_timeouts": self.call_timeouts,
            "direct_out": self.direct_out,
            "direct_in": self.direct_in,
            "direct_refused": self.direct_refused,
            "busy_refused": self.busy_refused,
            "latency_ms": {"p50": percentile(0.5), "p99": percentile(0.99)},
        }


class RemoteReply:
    """The reply side of an envelope whose caller is on another node: what the service answers
    travels back as a message (it quacks like the one-slot channel ``_mailbox`` uses)."""

    def __init__(self, node: Node, caller: str, call_id: int) -> None:
        self._node = node
        self._caller = caller
        self._call_id = call_id

    def send_nowait(self, value: Any) -> None:
        self._node.queue(self._caller, ["r", self._call_id, wire.to_wire(value)])

    def close(self) -> None:
        pass


class RemotePeer:
    """A connection served by another node, as the owner's service sees it: every call becomes
    a message to that node, which applies it to the real connection (``Node._on_edge_op``).

    A push is always accepted here; the edge applies the slow-consumer rule to its own queue and
    closes the connection (1013) there, and its ``Detach`` follows.
    """

    __slots__ = ("_conn", "_edge", "_node")

    def __init__(self, node: Node, edge: str, conn: ConnId) -> None:
        self._node = node
        self._edge = edge
        self._conn = conn

    def send_nowait(self, frame: str) -> bool:
        self._node.push(self._edge, self._conn, frame)
        return True

    def answer_nowait(self, frame: str) -> None:
        self._node.answer(self._edge, self._conn, frame)

    def handled(self) -> None:
        self._node.mark_handled(self._edge, self._conn)

    def close(self, code: int) -> None:
        self._node.queue(self._edge, ["x", self._conn, code])

    def identify(self, identity: Identity) -> None:
        self._node.queue(self._edge, ["y", self._conn, wire.to_wire(identity)])

    def relay_routes(self, code: str | None, targets: dict[str, Peer]) -> None:
        """The edge relays this connection's frames to the targets served by edges itself
        (``Node.relay_direct``); the others, on this node, still come here."""
        routes = [
            [target, peer._edge, peer._conn]
            for target, peer in targets.items()
            if type(peer) is RemotePeer
        ]
        self._node.queue(self._edge, ["R", self._conn, code, routes])


# Renew what this node holds, take what nobody holds (or what names this instance but is not
# held: a stale token of its own), and read every lease, in one call. KEYS: the lease keys.
# ARGV[1]: the instance, ARGV[2]: lease ms, ARGV[3..]: the tokens this node holds, one per key
# ("" for none). Returns the value of every lease after the call.
_KEEPER_LUA: Final = """
local result = {}
local mine = ARGV[1] .. ':'
for i, key in ipairs(KEYS) do
  local held = ARGV[i + 2]
  local value = redis.call('GET', key)
  if value and held ~= '' and value == held then
    redis.call('PEXPIRE', key, ARGV[2])
  elseif (not value) or (held == '' and string.sub(value, 1, #mine) == mine) then
    local epoch = redis.call('INCR', key .. ':epoch')
    value = ARGV[1] .. ':' .. epoch
    redis.call('SET', key, value, 'PX', ARGV[2])
  end
  result[i] = value
end
return result
"""


# Give up leases still holding this node's tokens, its heartbeat and its status entry.
# KEYS: the lease keys, then the alive key and the nodes hash. ARGV: the tokens, then the node id.
_RELEASE_LUA: Final = """
local leases = #KEYS - 2
for i = 1, leases do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
  end
end
redis.call('DEL', KEYS[leases + 1])
redis.call('HDEL', KEYS[leases + 2], ARGV[leases + 1])
return leases
"""


class Node:
    """See the module docstring. ``services`` maps a service name to the coroutine function
    that runs it while this node owns it: ``run(token, task_status)`` reports its
    ``LocalAddress`` once started and runs until cancelled."""

    def __init__(
        self,
        *,
        node_id: str,
        number: int,
        client: coredis.Redis[bytes],
        address: RedisAddress,
        services: dict[str, Callable[..., Awaitable[None]]],
        lease_ms: int,
        call_timeout_ms: int,
        linger_ms: int = 5,
    ) -> None:
        self.node_id = node_id
        # This run of the node: a node restarted with the same id is another instance, so the
        # state its previous run held is never taken for its own.
        self.instance = f"{node_id}@{number}"
        self.client = client
        self.address = address
        self._runners = services
        self.lease_ms = lease_ms
        self.call_timeout_s = call_timeout_ms / 1000
        self.linger_s = linger_ms / 1000
        # Set by the server once listening: reported in the heartbeat.
        self.listen_url_of: Callable[[], str] = lambda: ""
        self.connections_of: Callable[[], int] = lambda: 0
        self.peers: dict[str, dict[str, Any]] = {}  # the live nodes' last heartbeats
        self._forget: list[str] = []  # status entries of nodes long gone
        # The lease tokens this node started services under (a clean stop releases them; the
        # release checks each still holds the lease, so a stale one is harmless).
        self._tokens: dict[str, Owner] = {}
        self.tick_s = min(0.5, lease_ms / 4000)
        self.owners: dict[str, Owner | None] = {name: None for name in services}
        self.degraded = True  # until the first keeper round and the hop are up
        self.hop = HopStats()
        self._channel_prefix = f"{PREFIX}{address.db}:node:"
        self._inbox = (self._channel_prefix + self.instance).encode()
        self._publisher: Publisher | None = None
        self._hop_up = False
        self._keeper_ok = False
        self._last_renewal = -math.inf
        # Services this node runs: name -> (token, its local address, its cancel scope).
        self._running: dict[str, tuple[Owner, LocalAddress, trio.CancelScope]] = {}
        self._starting: dict[str, Owner] = {}  # services starting here, under their token
        # Connections of this node, per service: conn -> (owner token, peer).
        self._tracked: dict[str, dict[ConnId, tuple[Owner, Peer]]] = {n: {} for n in services}
        # Connections of this node attached to a remote owner: conn -> (peer, attachments).
        self._local_peers: dict[ConnId, list[Any]] = {}
        # Connections of other nodes attached to services this node runs: edge -> service ->
        # conns.
        self._remote: dict[str, dict[str, set[ConnId]]] = {}
        # Direct relay (docs/cluster.md): per connection of this node, the code it holds and
        # where each matched code's connection is (instance, conn), as the signaling owner last
        # said; and per connection, its frames sent to owners and not yet handled there.
        self._routes: dict[ConnId, tuple[str, dict[str, tuple[str, ConnId]]]] = {}
        self._in_flight: dict[ConnId, int] = {}
        self._outgoing: dict[str, list[Any]] = {}
        self._marks: dict[str, dict[ConnId, int]] = {}  # edge -> conn -> frames handled
        self._flush_wake = trio.Event()
        self._flushed = trio.Event()
        self._calls: dict[int, trio.MemorySendChannel[Any]] = {}
        # Clients' messages and identities arrive as JSON texts: those many send alike are
        # decoded once (``wire.TextMemo``); this edge's own identities' texts, likewise.
        self._texts = wire.TextMemo(wire.CODEC)
        self._identity_texts: dict[Identity, str] = {}
        self._call_ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._keeper = client.register_script(_KEEPER_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self.nodes_seen = 1

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The node's tasks: the hop, the flusher, the keeper. Reports started once the first
        keeper round has read every lease (owned services may still be starting)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._run_hop)
                nursery.start_soon(self._run_flusher)
                await self._keep_once()
                nursery.start_soon(self._run_keeper)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._leave()

    async def _leave(self) -> None:
        """A clean stop: give up the leases this node holds and its heartbeat, so that other
        nodes take the services over in their next keeper round rather than after a lease."""
        held = dict(self._tokens)
        for name in list(self._running):
            self._stop(name, "node stopping")
        with trio.move_on_after(LEAVE_TIMEOUT_S):
            try:
                await self._release(
                    keys=[lease_key(name) for name in held]
                    + [f"{PREFIX}alive:{self.instance}", f"{PREFIX}nodes"],
                    args=[*held.values(), self.node_id],
                )
                log.info("left the cluster", extra=context(node=self.node_id, released=len(held)))
            except Exception as error:  # Redis gone too: the leases expire by themselves
                log.warning(
                    "cluster leave failed", extra=context(node=self.node_id, error=str(error))
                )

    @property
    def available(self) -> bool:
        return not self.degraded

    @property
    def heartbeat_ok(self) -> bool:
        """Whether the last keeper round (heartbeat and leases) reached Redis."""
        return self._keeper_ok

    def _set_degraded(self) -> None:
        degraded = not (self._hop_up and self._keeper_ok)
        if degraded != self.degraded:
            if degraded:
                log.warning("cluster degraded: Redis unreachable", extra=context(node=self.node_id))
            else:
                log.info("cluster available", extra=context(node=self.node_id))
        was_degraded, self.degraded = self.degraded, degraded
        if was_degraded and not degraded:
            self._sync_attachments()

    def _sync_attachments(self) -> None:
        """Back from degraded: tell each owner which of this node's connections are still
        attached to its services (``s``). While degraded, a connection that closed could not
        send its ``Detach`` (refused, or lost with the hop), and the owner would keep its state
        until this node is gone; the owner detaches every connection the list leaves out."""
        for name, tracked in self._tracked.items():
            by_owner: dict[str, list[ConnId]] = {}
            for conn, (token, _) in tracked.items():
                owner = owner_node(token)
                if owner != self.instance:
                    by_owner.setdefault(owner, []).append(conn)
            current = self.owners.get(name)
            if current is not None and owner_node(current) != self.instance:
                by_owner.setdefault(owner_node(current), [])
            for owner, conns in by_owner.items():
                self.queue(owner, ["s", name, conns])

    async def _run_hop(self) -> None:
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    subscriber = Subscriber(await connect(self.address), self._inbox)
                    publisher = Publisher(await connect(self.address))
                    await nursery.start(subscriber.run, self._on_batch)
                    self._publisher = publisher
                    nursery.start_soon(publisher.run)
                    self._hop_up = True
                    self._set_degraded()
                    self._flush_wake.set()
            except* LinkError as group:
                log.warning(
                    "cluster hop down",
                    extra=context(node=self.node_id, error=str(group.exceptions[0])),
                )
            except* Exception:
                # Whatever broke, the node stays up and opens the hop again.
                log.exception("cluster hop failed", extra=context(node=self.node_id))
            self._hop_up = False
            self._publisher = None
            self._set_degraded()
            self._fail_calls()
            await trio.sleep(RECONNECT_DELAY_S)

    async def _run_keeper(self) -> None:
        while True:
            await trio.sleep(self.tick_s)
            await self._keep_once()

    async def _keep_once(self) -> None:
        """One round: heartbeat, leases, and the edges this node's services hold state of."""
        names = list(self.owners)
        # The token of each service this node runs or is starting; "" for the others (a lease
        # that names this instance then is stale: the keeper takes it again under a new epoch,
        # so that the edges see the owner's state as lost, which it is).
        held = [
            self._running[name][0] if name in self._running else self._starting.get(name, "")
            for name in names
        ]
        edges = sorted(self._remote)
        now = trio.current_time()
        try:
            # Generous: a node busy with many connections may run this task late, and a late
            # round must not make it refuse work (Redis down fails at once, not here).
            with trio.fail_after(max(self.tick_s * 4, 2.0)):
                async with self.client.pipeline(transaction=False) as pipe:
                    heartbeat = orjson.dumps(
                        {
                            "url": self.listen_url_of(),
                            "at": int(time.time() * 1000),
                            "connections": self.connections_of(),
                        }
                    )
                    pipe.set(f"{PREFIX}alive:{self.instance}", heartbeat, px=NODE_TTL_MS)
                    pipe.hset(f"{PREFIX}nodes", {self.node_id: heartbeat})
                    if self._forget:
                        pipe.hdel(f"{PREFIX}nodes", self._forget)
                        self._forget = []
                    everyone = pipe.hgetall(f"{PREFIX}nodes")
                    alive = [pipe.exists([f"{PREFIX}alive:{edge}"]) for edge in edges]
                    leases: Awaitable[Any] = self._keeper(
                        keys=[lease_key(name) for name in names],
                        args=[self.instance, str(self.lease_ms), *held],
                        client=pipe,
                    )
                values = [bytes(value).decode() for value in await leases]
                alive_flags = [bool(await flag) for flag in alive]
                self._read_nodes(await everyone)
        except Exception as error:  # any Redis or connection failure
            if self._keeper_ok:
                log.warning(
                    "cluster keeper failed", extra=context(node=self.node_id, error=str(error))
                )
            self._keeper_ok = False
            self._set_degraded()
            # Stopped a little before the lease can expire, so two owners never run at once.
            if now - self._last_renewal > self.lease_ms / 1000 - 2 * self.tick_s:
                for name in list(self._running):
                    self._stop(name, "lease not renewed")
            return
        if not self._keeper_ok and now - self._last_renewal > NODE_TTL_MS / 1000:
            # This node was out of the cluster for longer than its heartbeat: the owners may
            # have detached its connections (docs/cluster.md, "Failover"), so they start again.
            for name in self._tracked:
                self._close_tracked(name, None)
        self._keeper_ok = True
        self._last_renewal = now
        self._set_degraded()
        for edge, up in zip(edges, alive_flags, strict=True):
            if not up:
                self._edge_lost(edge)
        for name, token in zip(names, values, strict=True):
            self._owner_seen(name, token)

    def count_connections(self, count: Callable[[], int]) -> None:
        """Where the heartbeat reads this node's open WebSocket count."""
        self.connections_of = count

    def _read_nodes(self, heartbeats: Any) -> None:
        """The live nodes from their heartbeats; entries of nodes gone for an hour are removed
        in the next round."""
        now_ms = time.time() * 1000
        peers: dict[str, dict[str, Any]] = {}
        for key, value in heartbeats.items():
            try:
                beat = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if now_ms - beat.get("at", 0) <= NODE_TTL_MS:
                peers[bytes(key).decode()] = beat
            elif now_ms - beat.get("at", 0) > FORGET_NODE_MS:
                self._forget.append(bytes(key).decode())
        self.peers = peers
        self.nodes_seen = max(len(peers), 1)

    def _owner_seen(self, name: str, token: Owner) -> None:
        running = self._running.get(name)
        if running is not None and running[0] != token:
            self._stop(name, "lease moved")
        if self.owners[name] != token:
            previous = self.owners[name]
            self.owners[name] = None if owner_node(token) == self.instance else token
            if previous is not None:
                log.info(
                    "service owner changed",
                    extra=context(service=name, owner=owner_node(token), node=self.instance),
                )
            self._close_tracked(name, token)
        mine = owner_node(token) == self.instance and self._nursery is not None
        if mine and name not in self._running and name not in self._starting:
            assert self._nursery is not None
            self._starting[name] = token
            self._nursery.start_soon(self._run_service, name, token)

    async def _run_service(self, name: str, token: Owner) -> None:
        """Run ``name`` while this node holds ``token``; it is visible to routing once started."""
        scope = trio.CancelScope()
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    address = await nursery.start(self._runners[name], token)
                    self._running[name] = (token, address, scope)
                    self._tokens[name] = token
                    self._starting.pop(name, None)
                    self.owners[name] = token
                    self._remote_forget(name)
                    log.info("service owned", extra=context(service=name, node=self.node_id))
        except Exception:
            log.exception("service failed to start", extra=context(service=name))
        finally:
            self._starting.pop(name, None)
            if self._running.get(name, (None,))[0] == token:
                del self._running[name]
                if self.owners[name] == token:
                    self.owners[name] = None
                self._close_tracked(name, None)
                self._remote_forget(name)

    def _stop(self, name: str, why: str) -> None:
        running = self._running.pop(name, None)
        if running is None:
            return
        log.warning("service stopped here", extra=context(service=name, why=why))
        running[2].cancel()
        self.owners[name] = None
        self._close_tracked(name, None)
        self._remote_forget(name)

    # -- routing (the edge side) -------------------------------------------------------------

    def route(self, name: str) -> LocalAddress | str:
        """Where ``name`` runs now: its local address, or the owning node's id.

        Raises ``ClusterUnavailable`` while degraded or while the service has no owner."""
        if self.degraded:
            raise ClusterUnavailable("Redis unreachable")
        running = self._running.get(name)
        if running is not None:
            return running[1]
        return owner_node(self.current_token(name))

    def owns(self, name: str) -> bool:
        """Whether ``name`` runs on this node now."""
        return name in self._running

    def current_token(self, name: str) -> Owner:
        running = self._running.get(name)
        if running is not None:
            return running[0]
        token = self.owners.get(name)
        if token is None:
            raise ClusterUnavailable(f"no owner for {name}")
        return token

    def track(self, name: str, conn: ConnId, peer: Peer, remote: bool) -> None:
        """``conn`` of this node is attached to ``name`` under its current owner."""
        self._tracked[name][conn] = (self.current_token(name), peer)
        if remote:
            entry = self._local_peers.get(conn)
            if entry is None:
                self._local_peers[conn] = [peer, 1]
            else:
                entry[1] += 1

    def untrack(self, name: str, conn: ConnId) -> bool:
        """Forget ``conn``'s attachment to ``name``; True when it was attached (under any
        owner that is still current)."""
        found = self._tracked[name].pop(conn, None) is not None
        entry = self._local_peers.get(conn)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                self._forget_conn(conn)
        return found

    def _forget_conn(self, conn: ConnId) -> None:
        self._local_peers.pop(conn, None)
        self._routes.pop(conn, None)
        self._in_flight.pop(conn, None)

    def is_tracked(self, name: str, conn: ConnId) -> bool:
        return conn in self._tracked[name]

    def peer_of(self, name: str, conn: ConnId) -> Peer | None:
        tracked = self._tracked[name].get(conn)
        return tracked[1] if tracked is not None else None

    async def flushed(self) -> None:
        """Return after the next flush round."""
        await self._flushed.wait()

    def _close_tracked(self, name: str, token: Owner | None) -> None:
        """Close (1012) this node's connections attached to ``name`` under another owner than
        ``token``."""
        tracked = self._tracked[name]
        stale = [conn for conn, (owner, _) in tracked.items() if owner != token]
        if stale:
            log.info(
                "closing connections of a moved service",
                extra=context(service=name, connections=len(stale)),
            )
        for conn in stale:
            _, peer = tracked.pop(conn)
            self._forget_conn(conn)
            peer.close(CLOSE_SERVICE_RESTART)

    # -- sending -----------------------------------------------------------------------------

    def queue(self, node: str, op: list[Any]) -> None:
        """Queue ``op`` for ``node``; sent with the next flush."""
        ops = self._outgoing.get(node)
        if ops is None:
            self._outgoing[node] = ops = []
            self._flush_wake.set()
        ops.append(op)

    def room(self, node: str) -> bool:
        ops = self._outgoing.get(node)
        return ops is None or len(ops) < MAX_QUEUED_OPS

    def mark_handled(self, edge: str, conn: ConnId) -> None:
        """One frame of ``conn`` on ``edge`` was handled. The marks of a round travel together
        at the end of its batch, after every answer of the round: only later, never earlier."""
        marks = self._marks.get(edge)
        if marks is None:
            self._marks[edge] = marks = {}
            if edge not in self._outgoing:
                self._outgoing[edge] = []
                self._flush_wake.set()
        marks[conn] = marks.get(conn, 0) + 1

    def push(self, edge: str, conn: ConnId, text: str) -> None:
        """Queue a push of ``text`` to ``conn`` on ``edge``."""
        self._queue_text(edge, "p", conn, text)

    def answer(self, edge: str, conn: ConnId, text: str) -> None:
        """Queue an answer of ``text`` to ``conn`` on ``edge``."""
        self._queue_text(edge, "n", conn, text)

    def _queue_text(self, edge: str, kind: str, conn: ConnId, text: str) -> None:
        """Queue op ``kind`` of ``text`` for ``conn``: the same text to several connections
        in a row is one op with their list (a multicast, or every cache hit of a chunk
        answering its requester with the same ``chunk_data``)."""
        ops = self._outgoing.get(edge)
        if ops:
            last = ops[-1]
            if last[0] == kind and last[1] is text:
                last[2].append(conn)
                return
        self.queue(edge, [kind, text, [conn]])

    def identity_text(self, identity: Identity) -> str:
        """``identity`` as the JSON text an ``i`` op carries: made once per identity."""
        text = self._identity_texts.get(identity)
        if text is None:
            if len(self._identity_texts) >= MAX_IDENTITY_TEXTS:
                self._identity_texts.clear()
            text = self._identity_texts[identity] = wire.dumps(identity).decode()
        return text

    # -- direct relay (the edge side; docs/cluster.md, "Direct relay") -----------------------

    def forwarded(self, conn: ConnId) -> None:
        """One frame of ``conn`` went to a remote owner: until it is handled there, ``conn``
        relays through the owner, so that no frame of its overtakes an earlier one."""
        self._in_flight[conn] = self._in_flight.get(conn, 0) + 1

    def relay_direct(self, conn: ConnId, message: Relay) -> bool:
        """Relay ``message`` of ``conn`` to its matched peer straight from this edge, as the
        signaling owner would; False when it must go to the owner (no route to its target, or
        a frame of ``conn``'s still there, or no room on the way)."""
        route = self._routes.get(conn)
        if route is None or conn in self._in_flight:
            return False
        code, targets = route
        target = targets.get(message.target)
        entry = self._local_peers.get(conn)
        if target is None or entry is None:
            return False
        instance, target_conn = target
        text = encode(relayed(message, code))
        if instance == self.instance:
            self._relay_arrived(instance, conn, target_conn, code, message.target, text)
        elif self.room(instance):
            self.queue(instance, ["d", conn, target_conn, code, message.target, text])
        else:
            return False
        self.hop.direct_out += 1
        entry[0].handled()
        return True

    def _relay_arrived(
        self,
        sender: str,
        source: ConnId,
        conn: ConnId,
        code: str,
        target: str,
        text: str,
    ) -> None:
        """A frame relayed by ``sender``'s routes from ``code`` (its ``source``) to ``target``
        at ``conn`` of this node: delivered when this node's routes for ``conn`` agree (both
        came from the owner in one atomic flush), else answered ``peer_not_found``, as the
        owner would have once the change that made them differ was made."""
        route = self._routes.get(conn)
        entry = self._local_peers.get(conn)
        if (
            entry is not None
            and route is not None
            and route[0] == target
            and route[1].get(code) == (sender, source)
        ):
            self.hop.direct_in += 1
            if not entry[0].send_nowait(text):
                log.warning("slow consumer disconnected", extra=context(conn=conn))
                entry[0].close(CLOSE_TRY_AGAIN_LATER)
            return
        self.hop.direct_refused += 1
        refusal = ["b", source, target, encode(peer_not_found(target))]
        if sender == self.instance:
            self._relay_refused(refusal)
        else:
            self.queue(sender, refusal)

    def _relay_refused(self, op: list[Any]) -> None:
        """A frame relayed by this node's routes was refused: answer its sender and drop the
        route, so that its next frames to that code go through the owner."""
        _, conn, target, text = op
        entry = self._local_peers.get(conn)
        if entry is not None:
            entry[0].answer_nowait(text)
        route = self._routes.get(conn)
        if route is not None:
            route[1].pop(target, None)

    def _routes_told(self, op: list[Any]) -> None:
        """The signaling owner says where ``conn`` may relay now."""
        _, conn, code, targets = op
        if code is None or conn not in self._local_peers:
            self._routes.pop(conn, None)
        else:
            self._routes[conn] = (code, {target: (node, other) for target, node, other in targets})

    async def _run_flusher(self) -> None:
        busy = False
        while True:
            await self._flush_wake.wait()
            self._flush_wake = trio.Event()
            if busy:
                # Under load, a round waits a little for more: each PUBLISH costs its
                # sender, Redis and its receiver the same whatever it carries
                # (docs/cluster.md, "Batching").
                await trio.sleep(self.linger_s)
            else:
                # Let every task that is ready run first: what they queue goes in this round.
                await trio.lowlevel.cancel_shielded_checkpoint()
            busy = self._flush() >= BUSY_OPS
            self._flushed.set()
            self._flushed = trio.Event()

    def _flush(self) -> int:
        """Send what is queued, one PUBLISH per node; the number of ops sent."""
        outgoing, self._outgoing = self._outgoing, {}
        sent = 0
        marks, self._marks = self._marks, {}
        publisher = self._publisher
        sent_at = time.time()
        batches: list[tuple[bytes, bytes]] = []
        for node, ops in outgoing.items():
            handled = marks.get(node)
            if handled:
                ops.append(["H", [item for pair in handled.items() for item in pair]])
            if publisher is None:
                self._undeliverable(ops)
                continue
            payload = orjson.dumps([self.instance, sent_at, ops])
            batches.append(((self._channel_prefix + node).encode(), payload))
            sent += len(ops)
        if not batches:
            return sent
        assert publisher is not None
        try:
            # One atomic step in Redis: a node that reacts to its batch never gets ahead of
            # what this round sent another node (docs/cluster.md, "Direct relay").
            publisher.publish_all_nowait(batches)
        except LinkError:
            for ops in outgoing.values():
                self._undeliverable(ops)
            return 0
        hop = self.hop
        hop.batches_out += len(batches)
        hop.messages_out += sent
        hop.bytes_out += sum(len(payload) for _, payload in batches)
        return sent

    def _undeliverable(self, ops: list[Any]) -> None:
        """Ops that could not be sent: a caller waiting for a reply learns at once."""
        for op in ops:
            if op[0] == "q":
                self._fail_call(op[2])

    # -- calls -------------------------------------------------------------------------------

    async def call(self, node: str, name: str, request: Any) -> Any:
        """Send ``request`` to ``name`` on ``node`` and wait for its reply, within the call
        deadline. Raises ``ClusterUnavailable``, or ``Busy`` when the owner's inbox stayed
        full."""
        call_id = next(self._call_ids)
        send, receive = trio.open_memory_channel[Any](1)
        self._calls[call_id] = send
        self.hop.calls += 1
        try:
            self.queue(node, ["q", name, call_id, self.instance, wire.to_wire(request)])
            with trio.move_on_after(self.call_timeout_s):
                reply = await receive.receive()
                if isinstance(reply, (ClusterUnavailable, Busy)):
                    raise reply
                return reply
            self.hop.call_timeouts += 1
            raise ClusterUnavailable(f"{name} did not answer in time")
        finally:
            self._calls.pop(call_id, None)

    def _fail_call(self, call_id: int) -> None:
        channel = self._calls.pop(call_id, None)
        if channel is not None:
            channel.send_nowait(ClusterUnavailable("Redis unreachable"))

    def _fail_calls(self) -> None:
        for call_id in list(self._calls):
            self._fail_call(call_id)

    # -- receiving ---------------------------------------------------------------------------

    async def _on_batch(self, payload: bytes) -> None:
        try:
            sender, sent_at, ops = orjson.loads(payload)
        except (orjson.JSONDecodeError, ValueError):
            log.error("undecodable cluster message", extra=context(size=len(payload)))
            return
        hop = self.hop
        hop.batches_in += 1
        hop.messages_in += len(ops)
        hop.bytes_in += len(payload)
        hop.latencies_ms.append((time.time() - sent_at) * 1000)
        running = self._running
        texts = self._texts.decode
        # Client frames for one service in a row go into its inbox as one envelope (``Batch``):
        # one channel step for many frames. Any other op sends what is gathered first, so
        # every op keeps its place.
        gathered: list[Inbound] = []
        gathered_for: LocalAddress | None = None
        for op in ops:
            try:
                if op[0] == "i" and (service := running.get(op[1])) is not None:
                    # The hottest op, inline: a client's frame for a service that runs here.
                    if service[1] is not gathered_for:
                        if gathered_for is not None:
                            await _hand_in(gathered_for, gathered)
                        gathered, gathered_for = [], service[1]
                    identity = op[4]
                    gathered.append(
                        Inbound(op[2], texts(op[3]), None if identity is None else texts(identity))
                    )
                    continue
                if gathered_for is not None:
                    await _hand_in(gathered_for, gathered)
                    gathered, gathered_for = [], None
                await self._on_op(sender, op)
            except Exception:
                log.exception("cluster message failed", extra=context(op=str(op[0])))
        if gathered_for is not None:
            try:
                await _hand_in(gathered_for, gathered)
            except Exception:
                log.exception("cluster message failed", extra=context(op="i"))

    async def _on_op(self, sender: str, op: list[Any]) -> None:
        kind = op[0]
        if kind == "p":
            _, text, conns = op
            for conn in conns:
                entry = self._local_peers.get(conn)
                if entry is not None and not entry[0].send_nowait(text):
                    log.warning("slow consumer disconnected", extra=context(conn=conn))
                    entry[0].close(CLOSE_TRY_AGAIN_LATER)
        elif kind == "n":
            _, text, conns = op
            for conn in conns:
                entry = self._local_peers.get(conn)
                if entry is not None:
                    entry[0].answer_nowait(text)
        elif kind == "H":
            marks = op[1]
            in_flight = self._in_flight
            for index in range(0, len(marks), 2):
                conn, count = marks[index], marks[index + 1]
                entry = self._local_peers.get(conn)
                if entry is not None:
                    peer = entry[0]
                    for _ in range(count):
                        peer.handled()
                left = in_flight.get(conn, 0) - count
                if left > 0:
                    in_flight[conn] = left
                else:
                    in_flight.pop(conn, None)
        elif kind == "d":
            _, source, conn, code, target, text = op
            self._relay_arrived(sender, source, conn, code, target, text)
        elif kind == "R":
            self._routes_told(op)
        elif kind == "b":
            self._relay_refused(op)
        elif kind == "x":
            entry = self._local_peers.get(op[1])
            if entry is not None:
                entry[0].close(op[2])
        elif kind == "y":
            entry = self._local_peers.get(op[1])
            if entry is not None:
                entry[0].identify(wire.from_wire(op[2]))
        elif kind == "r":
            channel = self._calls.pop(op[1], None)
            if channel is not None:
                if len(op) == 3:
                    channel.send_nowait(wire.from_wire(op[2]))
                elif op[3] == BUSY_REPLY:
                    channel.send_nowait(Busy(f"{op[1]}: the owner's inbox is full"))
                else:
                    channel.send_nowait(ClusterUnavailable(op[3]))
        else:
            await self._on_service_op(sender, op)

    async def _on_service_op(self, sender: str, op: list[Any]) -> None:
        kind, name = op[0], op[1]
        running = self._running.get(name)
        if running is None:
            # Not (or no longer) the owner: the edge learns of the new owner from the lease and
            # closes its connections (1012); a call is answered at once.
            if kind == "q":
                self.queue(op[3], ["r", op[2], None, f"this node does not own {name}"])
            return
        address = running[1]
        if kind == "s":
            await self._sync_from(sender, name, address, op[2])
            return
        # ("i", a client's frame for a service that runs here, is handled in ``_on_batch``.)
        if kind == "c":
            request = wire.from_wire(op[2])
            if type(request) is Detach:
                held = self._remote.get(sender, {}).get(name)
                if held is not None:
                    held.discard(request.conn_id)
            envelope = Envelope(request)
        elif kind == "a":
            _, _, conn, ip = op
            self._remote.setdefault(sender, {}).setdefault(name, set()).add(conn)
            envelope = Envelope(Attach(conn, RemotePeer(self, sender, conn), ip))
        elif kind == "q":
            # A call from another node is refused as busy, as a local one is, when the inbox
            # stays full (docs/operations.md, "Limits and back-pressure"): the caller is not
            # left waiting for its deadline, and nothing of it is done.
            _, _, call_id, caller, request = op
            envelope = Envelope(wire.from_wire(request), RemoteReply(self, caller, call_id))
            if not await _put_within(address, envelope, BUSY_WAIT_S):
                self.hop.busy_refused += 1
                self.queue(caller, ["r", call_id, None, BUSY_REPLY])
            return
        else:
            log.error("unknown cluster message", extra=context(kind=str(kind)))
            return
        await _put(address, envelope)

    async def _sync_from(
        self, edge: str, name: str, address: LocalAddress, conns: list[ConnId]
    ) -> None:
        """``edge``'s connections attached to ``name`` are ``conns``: detach the others it had
        (``Node._sync_attachments``)."""
        held = self._remote.get(edge, {}).get(name)
        if not held:
            return
        gone = held - set(conns)
        if gone:
            log.info(
                "connections gone while their node was degraded: detached",
                extra=context(service=name, edge=edge, count=len(gone)),
            )
        for conn in gone:
            held.discard(conn)
            await _put(address, Envelope(Detach(conn)))

    def _edge_lost(self, edge: str) -> None:
        """``edge`` is gone: its connections leave every service here (``lost``: state that
        outlives a node is kept)."""
        held = self._remote.pop(edge, {})
        count = 0
        for name, conns in held.items():
            running = self._running.get(name)
            if running is None:
                continue
            for conn in conns:
                count += 1
                try:
                    running[1].cast_nowait(Detach(conn, lost=True))
                except trio.WouldBlock:
                    if self._nursery is not None:
                        self._nursery.start_soon(running[1].cast, Detach(conn, lost=True))
        if count:
            log.warning(
                "node gone: its connections detached", extra=context(edge=edge, count=count)
            )

    def _remote_forget(self, name: str) -> None:
        for services in self._remote.values():
            services.pop(name, None)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``"cluster"`` of ``/stats``: this node, the node count and each service's owner."""
        owners: dict[str, str | None] = {}
        for name in self.owners:
            if name in self._running:
                owners[name] = self.node_id
            else:
                token = self.owners[name]
                owners[name] = node_of(owner_node(token)) if token is not None else None
        return {
            "node": self.node_id,
            "nodes": self.nodes_seen,
            "owners": owners,
            "degraded": self.degraded,
            # The coredis pool's open connections (leases, heartbeats, the stores): a burst of
            # concurrent writes opens more, and the pool keeps them (each an fd and 3 tasks).
            "redis_connections": self.client.connection_pool.statistics.active_connections,
            "per_node": {
                node: {"connections": beat.get("connections", 0), "url": beat.get("url", "")}
                for node, beat in sorted(self.peers.items())
            },
            "hop": self.hop.snapshot(),
        }
