"""Front-end admission: WebSocket connection caps and the client's IP address."""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.define
class ConnectionCaps:
    """Open WebSocket connections, in total and per client IP (conventions.md, Limits)."""

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
    peer_address: str | None, headers: Iterable[tuple[str, str]], trust_proxy: str | None
) -> str:
    """The client's IP: the socket's peer unless ``trust_proxy`` names a header to trust.

    ``headers`` are all the request's (name, value) pairs; names match case-insensitively and
    repeated headers are joined with commas. For ``X-Forwarded-For`` the right-most entry is
    the one the trusted proxy added (http.md, Common headers); everything left of it is the
    client's own claim.
    """
    if trust_proxy is not None:
        wanted = trust_proxy.lower()
        value = ",".join(v for name, v in headers if name.lower() == wanted)
        if trust_proxy == "X-Forwarded-For":
            hops = [hop.strip() for hop in value.split(",") if hop.strip()]
            value = hops[-1] if hops else ""
        value = value.strip()
        if value:
            return value[:64]
    return peer_address or "unknown"
