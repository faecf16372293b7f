"""``RedisStore``: the store of cluster mode, in the Redis every node shares (docs/cluster.md).

- ``apply`` sends all its writes in ONE Lua script call: Redis runs a script alone, so another
  client sees all of the writes or none of them. The script checks everything that could fail
  (the fence, the operations, the types of its keys) before its first write, because Redis
  keeps the writes a script made before an error; the only write error left, out of memory, is
  checked by Redis at a script's first write and never after it. So a refused apply changed
  nothing.
- Fenced: when the store has a ``Fence``, the script first checks that the service's lease
  still holds this node's token (``zajel.cluster.fence``); an old owner's apply is refused as
  a whole with ``FencedStoreError``.
- ``apply`` returns once Redis answered: acknowledged means Redis has it. Whether it is on
  disk is Redis' ``appendonly``/``appendfsync`` setting (docs/cluster.md).
- A Redis or connection error is a ``StoreError``. When the connection breaks after the script
  was sent, Redis may have run it: the durable runtime reloads its state after every failed
  apply, so it then holds whatever Redis holds.
- The client belongs to the caller, who opened it (``async with``) and closes it; ``aclose``
  only marks this store closed.

Layout (schema 1), every key under the prefix (``zajel:``): hashes of JSON records
``servers`` (field: server id), ``att:devices`` (device id), ``att:references`` (the JSON array
``[version, platform]``), ``att:challenges`` (nonce); the string ``att:policy``; ``schema``, the
schema version, an integer; ``probe``, written by ``probe_write``. Records hold the fields the
SQLite store keeps (``zajel.storage.sqlite``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, assert_never

import attrs
import coredis
import coredis.exceptions

from zajel import metrics
from zajel.cluster.fence import FENCE_LUA, PREFIX, Fence, Fenced
from zajel.logs import context
from zajel.protocol.attestation import Challenge, Device, Policy, Reference
from zajel.protocol.servers import Counters, ServerEntry
from zajel.storage.interface import (
    AttestationRecords,
    DeleteChallenge,
    DeleteDevice,
    DeleteServer,
    PutChallenge,
    PutDevice,
    PutPolicy,
    PutReference,
    PutServer,
    StoreError,
    Write,
)

log = logging.getLogger("zajel.store")


class FencedStoreError(StoreError, Fenced):
    """A write was refused because this node no longer holds the lease it was made under;
    nothing of it was applied. A ``StoreError`` (what the durable runtime handles) and a
    ``Fenced`` (what the cluster code looks for)."""


@attrs.frozen
class StoreKeys:
    """The Redis keys of the store under ``prefix``."""

    prefix: str = PREFIX

    @property
    def servers(self) -> str:
        return f"{self.prefix}servers"

    @property
    def devices(self) -> str:
        return f"{self.prefix}att:devices"

    @property
    def references(self) -> str:
        return f"{self.prefix}att:references"

    @property
    def challenges(self) -> str:
        return f"{self.prefix}att:challenges"

    @property
    def policy(self) -> str:
        return f"{self.prefix}att:policy"

    @property
    def schema(self) -> str:
        return f"{self.prefix}schema"

    @property
    def probe(self) -> str:
        return f"{self.prefix}probe"

    @property
    def data(self) -> tuple[str, str, str, str, str]:
        """The keys of the records, in the order the scripts take them."""
        return (self.servers, self.devices, self.references, self.challenges, self.policy)


# -- schema ------------------------------------------------------------------------------------


@attrs.frozen
class RedisMigration:
    """One step of the Redis layout: ``lua`` runs inside the script that moves the schema
    version to ``version``, with the locals ``servers``, ``devices``, ``references``,
    ``challenges`` and ``policy`` naming the keys of the records."""

    version: int
    name: str
    lua: str


# Like the SQLite migrations (``zajel.storage.migrations``): later layouts append a migration; a
# migration that has shipped is never edited.
MIGRATIONS: Final = (RedisMigration(1, "servers and attestation records as JSON in hashes", ""),)

# KEYS[1] the schema key, KEYS[2..6] the record keys; ARGV[1] the version the migration starts
# from, ARGV[2] the version it reaches. Another node that migrated first makes it a no-op: the
# script answers the version it found.
_MIGRATE_HEAD: Final = """
local current = redis.call('GET', KEYS[1])
if current == false then current = '0' end
if current ~= ARGV[1] then return current end
local servers, devices, references, challenges, policy = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
"""
_MIGRATE_TAIL: Final = """
redis.call('SET', KEYS[1], ARGV[2])
return ARGV[2]
"""


def _schema_version(value: object) -> int:
    """The schema version a reply holds: absent is 0 (a new store)."""
    if value is None:
        return 0
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    if not text.isascii() or not text.isdigit():
        raise StoreError(f"the store's schema version is not a version: {text[:40]!r}")
    return int(text)


async def migrate(
    client: coredis.Redis[Any],
    migrations: Sequence[RedisMigration] = MIGRATIONS,
    *,
    prefix: str = PREFIX,
) -> int:
    """Bring the layout under ``prefix`` up to the last of ``migrations``, each step in one
    script that runs only if the schema is still at the version the step starts from.

    Returns the version the store is at afterwards.

    Raises:
        StoreError: the store's schema is newer than ``migrations``, or Redis fails.
    """
    keys = StoreKeys(prefix)
    latest = migrations[-1].version if migrations else 0
    with _redis_errors():
        current = _schema_version(await client.get(keys.schema))
        while True:
            if current > latest:
                raise StoreError(
                    f"store schema {current} is newer than this server's {latest}; "
                    "run a newer zajel"
                )
            pending = [migration for migration in migrations if migration.version > current]
            if not pending:
                return current
            step = pending[0]
            script = client.register_script(_MIGRATE_HEAD + step.lua + _MIGRATE_TAIL)
            # The version reached: the step's, or the one another node's migration left.
            reached: object = await script(
                keys=[keys.schema, *keys.data], args=[str(current), str(step.version)]
            )
            current = _schema_version(reached)
            if current == step.version:
                log.info("store migrated", extra=context(version=step.version, migration=step.name))


# -- writes ------------------------------------------------------------------------------------

# The operations of the apply script: ARGV triples (op, field, value). An op names the record
# key (its position among the record keys) and the command.
_OPS: Final[Mapping[type[Any], str]] = {
    PutServer: "put_server",
    DeleteServer: "delete_server",
    PutDevice: "put_device",
    DeleteDevice: "delete_device",
    PutReference: "put_reference",
    PutChallenge: "put_challenge",
    DeleteChallenge: "delete_challenge",
    PutPolicy: "put_policy",
}

# KEYS[k+1..k+5] the record keys (k = 1 when fenced: KEYS[1] is the lease); ARGV[a+1..] the
# triples (a = 1 when fenced: ARGV[1] is the token).
_APPLY_BODY: Final = """
local OPS = {
  put_server = {'HSET', 1}, delete_server = {'HDEL', 1},
  put_device = {'HSET', 2}, delete_device = {'HDEL', 2},
  put_reference = {'HSET', 3},
  put_challenge = {'HSET', 4}, delete_challenge = {'HDEL', 4},
  put_policy = {'SET', 5},
}
local TYPES = {'hash', 'hash', 'hash', 'hash', 'string'}
if (#ARGV - a) % 3 ~= 0 then
  return redis.error_reply('ERR writes come in triples')
end
for i = a + 1, #ARGV, 3 do
  if OPS[ARGV[i]] == nil then
    return redis.error_reply('ERR unknown write ' .. ARGV[i])
  end
end
for n = 1, 5 do
  local found = redis.call('TYPE', KEYS[k + n])['ok']
  if found ~= 'none' and found ~= TYPES[n] then
    return redis.error_reply(
      'WRONGTYPE ' .. KEYS[k + n] .. ' holds a ' .. found .. ', not a ' .. TYPES[n])
  end
end
for i = a + 1, #ARGV, 3 do
  local op = OPS[ARGV[i]]
  local key = KEYS[k + op[2]]
  if op[1] == 'HSET' then
    redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
  elseif op[1] == 'HDEL' then
    redis.call('HDEL', key, ARGV[i + 1])
  else
    redis.call('SET', key, ARGV[i + 2])
  end
end
return (#ARGV - a) / 3
"""
_APPLY_FENCED: Final = FENCE_LUA + "local k, a = 1, 1\n" + _APPLY_BODY
_APPLY_UNFENCED: Final = "local k, a = 0, 0\n" + _APPLY_BODY

# KEYS[1] the probe key; fenced: KEYS[1] the lease, KEYS[2] the probe key, ARGV[1] the token.
_PROBE_FENCED: Final = FENCE_LUA + "redis.call('SET', KEYS[2], ARGV[1])\nreturn 1\n"
_PROBE_UNFENCED: Final = "redis.call('SET', KEYS[1], '-')\nreturn 1\n"


def _encode(writes: Sequence[Write]) -> list[bytes]:
    """The ARGV triples of ``writes``, in order.

    Raises:
        StoreError: a record JSON cannot hold (an infinite or NaN float), or an id that is not
            Unicode (a lone surrogate); nothing is sent.
    """
    args: list[bytes] = []
    try:
        for write in writes:
            field, value = _field_and_value(write)
            args += (_OPS[type(write)].encode(), field.encode(), value.encode())
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        raise StoreError(f"cannot store {type(write).__name__}: {exc}") from exc
    return args


def _field_and_value(write: Write) -> tuple[str, str]:
    if isinstance(write, PutServer):
        return write.entry.server_id, _json(_server_record(write.entry))
    if isinstance(write, DeleteServer):
        return write.server_id, ""
    if isinstance(write, PutDevice):
        return write.device.device_id, _json(write.device.to_record())
    if isinstance(write, DeleteDevice):
        return write.device_id, ""
    if isinstance(write, PutReference):
        reference = write.reference
        return _reference_field(reference), _json(reference.to_json())
    if isinstance(write, PutChallenge):
        return write.challenge.nonce, _json(write.challenge.to_record())
    if isinstance(write, DeleteChallenge):
        return write.nonce, ""
    if isinstance(write, PutPolicy):
        return "", _json(write.policy.to_json())
    assert_never(write)


def _reference_field(reference: Reference) -> str:
    """A reference's field: its version and platform, the key the SQLite store gives it, as a
    JSON array so that no two pairs share a field."""
    return _json([reference.version, reference.platform])


def _json(record: Any) -> str:
    # ASCII JSON (the default): a lone surrogate in a value is kept as its \\u escape.
    return json.dumps(record, separators=(",", ":"), allow_nan=False)


def _server_record(entry: ServerEntry) -> dict[str, Any]:
    """A server entry as a record: the columns of the SQLite store's ``servers`` table."""
    counters = entry.counters
    return {
        "server_id": entry.server_id,
        "endpoint": entry.endpoint,
        "public_key": entry.public_key,
        "region": entry.region,
        "connections": counters.connections,
        "relay_connections": counters.relay_connections,
        "signaling_connections": counters.signaling_connections,
        "active_codes": counters.active_codes,
        "registered_at": entry.registered_at,
        "last_seen": entry.last_seen,
    }


def _server_from_record(obj: Mapping[str, Any]) -> ServerEntry:
    """Read back what ``_server_record`` wrote."""
    return ServerEntry(
        obj["server_id"],
        obj["endpoint"],
        obj["public_key"],
        obj["region"],
        Counters(
            obj["connections"],
            obj["relay_connections"],
            obj["signaling_connections"],
            obj["active_codes"],
        ),
        obj["registered_at"],
        obj["last_seen"],
    )


# -- the store ---------------------------------------------------------------------------------


class RedisStore:
    """A ``Store`` in Redis, on a client the caller opened and closes.

    ``fence`` None writes unfenced (tests, tools). Make one with ``open``, which also brings
    the schema up to date; the constructor alone does not look at the schema.

    ``observe_commit`` gets the seconds each successful ``apply`` took; by default the
    ``zajel_store_commit_seconds`` of the server's current ``zajel.metrics.Metrics``, if any.
    """

    def __init__(
        self,
        client: coredis.Redis[Any],
        *,
        fence: Fence | None = None,
        prefix: str = PREFIX,
        observe_commit: Callable[[float], None] | None = None,
    ) -> None:
        self.client = client
        self.fence = fence
        self.keys = StoreKeys(prefix)
        self._closed = False
        if observe_commit is None and (current := metrics.current()) is not None:
            observe_commit = current.store_timer("redis")
        self.observe_commit = observe_commit
        # Registering computes the SHA only; the first call loads the script into Redis (and
        # again after a Redis restart), later calls send its SHA.
        if fence is None:
            self._apply_script = client.register_script(_APPLY_UNFENCED)
            self._probe_script = client.register_script(_PROBE_UNFENCED)
        else:
            self._apply_script = client.register_script(_APPLY_FENCED)
            self._probe_script = client.register_script(_PROBE_FENCED)

    @classmethod
    async def open(
        cls,
        client: coredis.Redis[Any],
        *,
        fence: Fence | None = None,
        prefix: str = PREFIX,
        migrations: Sequence[RedisMigration] = MIGRATIONS,
    ) -> RedisStore:
        """The store under ``prefix``, its schema brought up to date (``migrate``).

        Raises:
            StoreError: the schema is newer than ``migrations``, or Redis fails.
        """
        await migrate(client, migrations, prefix=prefix)
        return cls(client, fence=fence, prefix=prefix)

    def with_fence(self, fence: Fence | None) -> RedisStore:
        """A store on the same client and keys whose writes are fenced by ``fence`` (a new
        lease, a new token); this store is unchanged."""
        return RedisStore(
            self.client, fence=fence, prefix=self.keys.prefix, observe_commit=self.observe_commit
        )

    async def load_servers(self) -> list[ServerEntry]:
        self._check_open()
        with _redis_errors():
            values = await self.client.hvals(self.keys.servers)
            return [_server_from_record(json.loads(value)) for value in values]

    async def load_attestation(self) -> AttestationRecords:
        self._check_open()
        with _redis_errors():
            # MULTI/EXEC: one round trip, and one moment's records.
            async with self.client.pipeline(transaction=True) as pipe:
                devices = pipe.hvals(self.keys.devices)
                references = pipe.hvals(self.keys.references)
                challenges = pipe.hvals(self.keys.challenges)
                policy = pipe.get(self.keys.policy)
            policy_value = await policy
            return AttestationRecords(
                devices=[Device.from_record(json.loads(v)) for v in await devices],
                references=[Reference.from_json(json.loads(v)) for v in await references],
                challenges=[Challenge.from_record(json.loads(v)) for v in await challenges],
                policy=None if policy_value is None else Policy.from_json(json.loads(policy_value)),
            )

    async def apply(self, writes: Sequence[Write]) -> None:
        """Commit ``writes`` in one script call; nothing to commit sends nothing.

        Raises:
            FencedStoreError: the fence's lease no longer holds its token; nothing was applied.
            StoreError: a record cannot be stored, or Redis fails.
        """
        self._check_open()
        if not writes:
            return
        args = _encode(writes)
        keys = list(self.keys.data)
        if self.fence is not None:
            keys.insert(0, self.fence.key)
            args.insert(0, self.fence.token.encode())
        started = time.perf_counter()
        with _redis_errors():
            await self._apply_script(keys=keys, args=args)
        if self.observe_commit is not None:
            self.observe_commit(time.perf_counter() - started)

    async def ping(self) -> None:
        self._check_open()
        with _redis_errors():
            await self.client.ping()

    async def probe_write(self) -> None:
        """Write the probe key, fenced like ``apply``: fails where an apply would (lease lost,
        Redis out of memory or unable to write its append-only file)."""
        self._check_open()
        if self.fence is None:
            keys, args = [self.keys.probe], []
        else:
            keys, args = [self.fence.key, self.keys.probe], [self.fence.token]
        with _redis_errors():
            await self._probe_script(keys=keys, args=args)

    async def aclose(self) -> None:
        """Mark the store closed; the client stays open (its caller closes it)."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")


@contextmanager
def _redis_errors() -> Iterator[None]:
    """Turn what Redis and the connection raise into ``StoreError``; a refused fence into
    ``FencedStoreError``. (A record that does not read back is a ``StoreError`` too.)"""
    try:
        yield
    except StoreError:
        raise
    except coredis.exceptions.ResponseError as exc:
        if str(exc).startswith("FENCED"):
            raise FencedStoreError(f"Redis: {exc}") from exc
        raise StoreError(f"Redis: {exc}") from exc
    except (coredis.exceptions.RedisError, OSError) as exc:
        raise StoreError(f"Redis: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:  # json.loads and from_record
        raise StoreError(f"Redis holds a record this server cannot read: {exc!r}") from exc
