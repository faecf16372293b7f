"""Fencing: a node writes a service's durable state only while it holds that service's lease.

A lease (``zajel.cluster.lease``) is a Redis key whose value names the owner and an epoch that
grows with every new owner. Every write a service's owner makes to Redis runs in one Lua script
that first checks the lease still holds exactly that value; an old owner whose lease expired
(paused, partitioned, slow) has its write refused as a whole, never half applied
(docs/cluster.md, "Fencing").
"""

from __future__ import annotations

from typing import Final

import attrs

# Every key of the cluster starts with this.
PREFIX: Final = "zajel:"

# The first lines of every fenced Lua script: KEYS[1] is the lease key, ARGV[1] the token.
FENCE_LUA: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED lease lost')
end
"""


def lease_key(service: str) -> str:
    """The Redis key of ``service``'s lease."""
    return f"{PREFIX}lease:{service}"


@attrs.frozen
class Fence:
    """What a fenced write checks: the lease ``key`` must still hold ``token``
    (``"<node id>:<epoch>"``)."""

    key: str
    token: str


class Fenced(Exception):
    """A write was refused: this node no longer holds the lease it was made under."""
