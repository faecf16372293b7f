"""Rendezvous entries in Redis: a dead drop outlives the node that took it (docs/cluster.md;
docs/protocol/relay.md, "Rendezvous").

The relay service's owner keeps the entries in memory and hands every change to
``RendezvousMirror.record`` (``zajel.services.relay``); the mirror's writer task copies them to
Redis; a node that takes the service over reads them back with ``load``.

Invariants:
- One key per entry, ``zajel:rv:<kind>:<JSON array [name, peer id]>``: the JSON array makes a
  key unambiguous whatever ``:`` a point, token or peer id holds, and ``load`` reads it back.
  Its value is a JSON object (``deadDrop``, ``relayId``, ``expiresMs``, ``ip``, ``seq``) and its
  own expiry is ``expiresMs`` (``SET … PXAT``): Redis drops an entry at its TTL whether or not
  any node is alive, so an expiry is never written.
- ``record`` never waits. The backlog holds at most one change per key (a later change of a
  key replaces the earlier one), so it is bounded by the keys changed since the last write,
  never by how often they change.
- A write is one fenced Lua call (``zajel.cluster.fence``): all of its changes land or none.
  A batch the fence refuses is dropped (another node owns the service and keeps the entries
  now); a batch that fails otherwise (Redis unreachable, slow) stays pending and is tried
  again after a back-off, merged under any newer change of the same key. ``SET`` and ``DEL``
  are idempotent, so trying again a batch that did land is harmless.
- ``seq`` orders entries by registration, across owners: each put gets one greater than the
  last this mirror gave or loaded, and at least the wall clock in microseconds, so ``load``
  returns the entries oldest first, as ``RendezvousState.restore`` wants them.

Log lines (``zajel.cluster``) give counts only: never a point, token, peer id or dead drop
(docs/protocol/relay.md, "Privacy").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

import coredis
import coredis.exceptions
import orjson
import trio
from coredis.commands.script import Script

from zajel import clock
from zajel.cluster.fence import FENCE_LUA, PREFIX, Fence
from zajel.logs import context
from zajel.services.rendezvous import Change, Kind, PutEntry

log = logging.getLogger("zajel.cluster")

KEY_PREFIX: Final = f"{PREFIX}rv:"
KINDS: Final[tuple[Kind, ...]] = ("daily", "hourly")
RETRY_S_DEFAULT: Final = 0.1  # first back-off after a failed write; doubles up to the maximum
RETRY_MAX_S_DEFAULT: Final = 5.0
WRITE_TIMEOUT_S_DEFAULT: Final = 5.0  # a write not answered by then counts as failed
BATCH_MAX_DEFAULT: Final = 5_000  # changes per Lua call: bounds how long Redis is busy with one
MGET_BATCH: Final = 1_000
SCAN_COUNT: Final = 1_000

# KEYS[1] the lease, ARGV[1] its token; then per change i >= 2: KEYS[i] the entry's key,
# ARGV[2i-2] its value ('' to delete it) and ARGV[2i-1] its expiry in epoch milliseconds.
_WRITE_LUA: Final = (
    FENCE_LUA
    + """
for i = 2, #KEYS do
  local value = ARGV[2 * i - 2]
  if value == '' then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], value, 'PXAT', ARGV[2 * i - 1])
  end
end
return #KEYS - 1
"""
)

# An entry's identity: (kind, point or token, peer id).
_Key = tuple[Kind, str, str]


def entry_key(kind: Kind, name: str, peer_id: str) -> str:
    """The Redis key of ``peer_id``'s entry at point or token ``name``."""
    return KEY_PREFIX + kind + ":" + orjson.dumps([name, peer_id]).decode()


def parse_key(key: str) -> _Key | None:
    """``entry_key``'s arguments back, or ``None`` for a key it did not make."""
    if not key.startswith(KEY_PREFIX):
        return None
    kind, _, names = key[len(KEY_PREFIX) :].partition(":")
    try:
        pair = orjson.loads(names)
    except orjson.JSONDecodeError:
        return None
    if kind not in KINDS or not isinstance(pair, list) or len(pair) != 2:
        return None
    name, peer_id = pair
    if not isinstance(name, str) or not isinstance(peer_id, str):
        return None
    return ("daily" if kind == "daily" else "hourly"), name, peer_id


class RendezvousMirror:
    """The Redis copy of the rendezvous entries: ``record`` (from the relay service),
    ``run`` (the writer task) and ``load`` (at take-over)."""

    def __init__(
        self,
        *,
        epoch_ms: Callable[[], int] = clock.epoch_ms,
        retry_s: float = RETRY_S_DEFAULT,
        retry_max_s: float = RETRY_MAX_S_DEFAULT,
        write_timeout_s: float = WRITE_TIMEOUT_S_DEFAULT,
        batch_max: int = BATCH_MAX_DEFAULT,
    ) -> None:
        self._epoch_ms = epoch_ms
        self._retry_s = retry_s
        self._retry_max_s = max(retry_max_s, retry_s)
        self._write_timeout_s = write_timeout_s
        self._batch_max = max(batch_max, 1)
        # key -> its latest change not yet written, with the seq of a put (0 for a drop)
        self._pending: dict[_Key, tuple[Change, int]] = {}
        self._in_flight = 0  # changes of the write under way
        self._seq = 0
        self._wake = trio.Event()

    @property
    def backlog(self) -> int:
        """Changes not yet known to be in Redis: pending, and the write under way."""
        return len(self._pending) + self._in_flight

    def record(self, changes: Iterable[Change]) -> None:
        """Take ``changes`` (oldest first) to write; never waits."""
        pending = self._pending
        floor = self._epoch_ms() * 1000
        for change in changes:
            key = (change.kind, change.name, change.peer_id)
            pending.pop(key, None)  # re-inserted as the newest
            if isinstance(change, PutEntry):
                self._seq = max(self._seq + 1, floor)
                pending[key] = (change, self._seq)
            else:
                pending[key] = (change, 0)
        if pending:
            self._wake.set()

    async def run(
        self,
        client: coredis.Redis[Any],
        fence: Fence,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The writer: forever, whenever changes are pending, write them in one fenced call
        under ``fence`` (``client`` is open: inside its ``async with``)."""
        script = client.register_script(_WRITE_LUA)
        task_status.started()
        delay = self._retry_s
        failing = False
        while True:
            while not self._pending:
                self._wake = trio.Event()
                await self._wake.wait()
            batch = self._take_batch()
            error = await self._write(script, batch, fence)
            if error is None:
                delay = self._retry_s
                if failing:
                    failing = False
                    log.info("rendezvous writes resumed", extra=context(written=len(batch)))
                continue
            # Back in the backlog, under any newer change of the same keys.
            for key, change in batch.items():
                self._pending.setdefault(key, change)
            if not failing:
                failing = True
                log.warning(
                    "rendezvous writes failed, retrying",
                    extra=context(pending=len(self._pending), error=type(error).__name__),
                )
            await trio.sleep(delay)  # a retry back-off, not a TTL
            delay = min(delay * 2, self._retry_max_s)

    async def load(self, client: coredis.Redis[Any]) -> list[PutEntry]:
        """Every entry in Redis, oldest registration first (for ``RelayService.restore``);
        later puts of this mirror sort after them. A key or value it cannot read is skipped."""
        keys = list(
            dict.fromkeys(
                [key async for key in client.scan_iter(match=KEY_PREFIX + "*", count=SCAN_COUNT)]
            )
        )
        found: list[tuple[int, PutEntry]] = []
        unreadable = 0
        for start in range(0, len(keys), MGET_BATCH):
            chunk = keys[start : start + MGET_BATCH]
            values = await client.mget(chunk)
            for key, value in zip(chunk, values, strict=True):
                if value is None:
                    continue  # expired or dropped since the scan
                read = _parse(_text(key), _text(value))
                if read is None:
                    unreadable += 1
                else:
                    found.append(read)
        if unreadable:
            log.warning("rendezvous entries unreadable", extra=context(skipped=unreadable))
        found.sort(key=lambda item: item[0])
        if found:
            self._seq = max(self._seq, found[-1][0])
        return [put for _, put in found]

    # -- internals -----------------------------------------------------------------------

    def _take_batch(self) -> dict[_Key, tuple[Change, int]]:
        """The oldest pending changes, at most ``batch_max``, taken out of the backlog."""
        pending = self._pending
        if len(pending) <= self._batch_max:
            self._pending = {}
            return pending
        batch: dict[_Key, tuple[Change, int]] = {}
        for key in list(pending)[: self._batch_max]:
            batch[key] = pending.pop(key)
        return batch

    @staticmethod
    def _encode(batch: dict[_Key, tuple[Change, int]], fence: Fence) -> tuple[list[str], list[str]]:
        """The keys and arguments of one write of ``batch`` under ``fence``."""
        keys = [fence.key]
        args = [fence.token]
        for key, (change, seq) in batch.items():
            keys.append(entry_key(*key))
            if isinstance(change, PutEntry):
                value = {
                    "deadDrop": change.dead_drop,
                    "relayId": change.relay_id,
                    "expiresMs": change.expires_ms,
                    "ip": change.ip,
                    "seq": seq,
                }
                args.append(orjson.dumps(value).decode())
                args.append(str(max(change.expires_ms, 1)))  # PXAT takes only positive times
            else:
                args.append("")
                args.append("0")
        return keys, args

    async def _write(
        self, script: Script[Any], batch: dict[_Key, tuple[Change, int]], fence: Fence
    ) -> Exception | None:
        """Write ``batch`` in one fenced call. Returns the error when it may be tried again;
        ``None`` when it landed, or when the fence refused it (dropped, and logged)."""
        keys, args = self._encode(batch, fence)
        self._in_flight = len(batch)
        try:
            with trio.fail_after(self._write_timeout_s):
                await script(keys=keys, args=args)
        except coredis.exceptions.ResponseError as error:
            if not str(error).startswith("FENCED"):
                return error
            log.warning(
                "rendezvous writes refused: the lease is lost", extra=context(dropped=len(batch))
            )
        except (coredis.exceptions.RedisError, OSError, trio.TooSlowError) as error:
            return error
        finally:
            self._in_flight = 0
        return None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _parse(key: str, value: str) -> tuple[int, PutEntry] | None:
    """One stored entry as (seq, entry), or ``None`` when it is not one."""
    identity = parse_key(key)
    if identity is None:
        return None
    try:
        fields = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(fields, dict):
        return None
    dead_drop, relay_id = fields.get("deadDrop"), fields.get("relayId")
    expires_ms, ip, seq = fields.get("expiresMs"), fields.get("ip"), fields.get("seq")
    if not (
        isinstance(dead_drop, str)
        and (relay_id is None or isinstance(relay_id, str))
        and type(expires_ms) is int
        and isinstance(ip, str)
        and type(seq) is int
    ):
        return None
    kind, name, peer_id = identity
    return seq, PutEntry(kind, name, peer_id, dead_drop, relay_id, expires_ms, ip)
