"""Front-end admission: WebSocket connection caps and the client's IP address."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import attrs

from zajel.config import Network


@attrs.define
class ConnectionCaps:
    """Open WebSocket connections, in total and per client IP (docs/protocol/conventions.md,
    "Limits")."""

    max_total: int
    max_per_ip: int
    total: int = 0
    _per_ip: dict[str, int] = attrs.field(factory=dict)

    def try_acquire(self, ip: str) -> bool:
        """Count one more connection from ``ip``; False (and nothing counted) when over a cap."""
        if self.total >= self.max_total or self._per_ip.get(ip, 0) >= self.max_per_ip:
            return False
        self.total += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self._per_ip[ip] - 1
        if left:
            self._per_ip[ip] = left
        else:
            del self._per_ip[ip]

    def ips(self) -> int:
        return len(self._per_ip)


def client_ip(
    peer_address: str | None,
    headers: Iterable[tuple[str, str]],
    trust_proxy: str | None,
    trusted_proxies: Sequence[Network] = (),
) -> str:
    """The client's IP: the socket's peer, unless that peer is a trusted proxy.

    ``headers`` are all the request's (name, value) pairs; names match case-insensitively and
    repeated headers are joined with commas. The ``trust_proxy`` header is believed only from a
    peer in ``trusted_proxies`` (docs/operations.md, "Behind a TLS-terminating proxy"). For
    ``X-Forwarded-For`` the entries are read right to left, each added by the hop before it:
    the first that is not itself a trusted proxy is the client; everything left of it is the
    client's own claim. A header value that is not an IP address is ignored.
    """
    peer = peer_address or "unknown"
    if trust_proxy is None or not is_trusted(peer, trusted_proxies):
        return peer
    wanted = trust_proxy.lower()
    value = ",".join(v for name, v in headers if name.lower() == wanted)
    hops = [hop.strip() for hop in value.split(",") if hop.strip()]
    if trust_proxy != "X-Forwarded-For":
        hops = hops[-1:]
    client = peer
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:
            break
        client = str(address)
        if not is_trusted(client, trusted_proxies):
            break
    return client


def ip_key(ip: str) -> str:
    """The key every per-IP cap counts by: the address itself for IPv4 (and IPv4-mapped IPv6),
    the /64 network for IPv6, since one IPv6 subscriber is usually given a whole /64."""
    address = _parse_ip(ip)
    if address is None:
        return ip[:64]
    if address.version == 6:
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an address (``[::1]`` and a ``%zone`` accepted), IPv4-mapped IPv6 as IPv4."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(ip: str, trusted_proxies: Sequence[Network]) -> bool:
    """Whether ``ip`` is one of ``trusted_proxies``."""
    address = _parse_ip(ip)
    return address is not None and any(address in network for network in trusted_proxies)
