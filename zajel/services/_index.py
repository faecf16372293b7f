"""Two helpers for the maps of sets and maps of maps that state classes index by: removing a
member also removes a container left empty, so an idle state holds no empty entries."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Hashable)


def discard(index: dict[K, set[V]], key: K, member: V) -> None:
    """Remove ``member`` from ``index[key]``, and ``key`` once its set is empty."""
    members = index.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del index[key]


def remove(table: dict[K, dict[V, Any]], key: K, member: V) -> None:
    """Remove ``member`` from ``table[key]``, and ``key`` once its map is empty."""
    entries = table.get(key)
    if entries is not None:
        entries.pop(member, None)
        if not entries:
            del table[key]
