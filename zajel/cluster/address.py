"""``ClusterAddress``: the ``Address`` of a service in cluster mode, wherever it runs.

The front end holds one per service, as it holds a ``LocalAddress`` on a single node. Each
request goes to the service's current owner: straight into its inbox when that is this node,
else as a message to the owning node (``zajel.cluster.node``). The services never know the
difference (docs/cluster.md, "Edges and owners").

- ``Attach`` and ``Detach`` are also recorded on the node, so that a connection whose owner
  state is lost is closed with 1012. A ``Detach`` of a connection that was already closed for
  that reason goes nowhere: the new owner never knew it.
- A signaling ``Relay`` between matched peers goes straight to the peer's node when the owner
  has told this node the route (``Node.relay_direct``); every other frame goes to the owner.
- When the cluster is unavailable, a client's frame is answered with the ``unavailable`` error
  (docs/cluster.md, "What clients see"), an ``Attach`` closes the new connection with 1012, and
  ``call`` raises ``ClusterUnavailable`` (HTTP 503).
"""

from __future__ import annotations

from typing import Any

import trio

from zajel.cluster import wire
from zajel.cluster.node import CLOSE_SERVICE_RESTART, ClusterUnavailable, Node
from zajel.protocol import errors
from zajel.protocol.frames import encode
from zajel.protocol.signaling import Relay
from zajel.services._mailbox import LocalAddress
from zajel.services._peers import Attach, Detach, Inbound

_UNAVAILABLE = encode(errors.cluster_unavailable().to_frame())


class ClusterAddress:
    """How this node reaches service ``name``; see the module docstring."""

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        # A matched pair's relays go edge to edge (docs/cluster.md, "Direct relay").
        self._direct = name == "signaling"

    def cast_nowait(self, request: Any) -> None:
        """Send ``request`` now; raises ``trio.WouldBlock`` when the way there is full."""
        node, name = self.node, self.name
        try:
            route = node.route(name)
        except ClusterUnavailable:
            self._refuse(request)
            return
        kind = type(request)
        if isinstance(route, LocalAddress):
            if kind is Detach and not node.is_tracked(name, request.conn_id):
                return
            route.cast_nowait(request)
            self._sent_locally(request)
            return
        if not node.room(route):
            raise trio.WouldBlock
        if kind is Attach:
            node.track(name, request.conn_id, request.peer, remote=True)
            node.queue(route, ["a", name, request.conn_id, request.ip])
            return
        if kind is Inbound:
            if (
                self._direct
                and type(request.message) is Relay
                and node.relay_direct(request.conn_id, request.message)
            ):
                return
            # The hottest message crosses flat: no wrapper to walk on either side.
            node.forwarded(request.conn_id)
            identity = request.identity
            node.queue(
                route,
                [
                    "i",
                    name,
                    request.conn_id,
                    wire.dumps(request.message).decode(),
                    None if identity is None else node.identity_text(identity),
                ],
            )
            return
        if kind is Detach and not node.untrack(name, request.conn_id):
            return
        node.queue(route, ["c", name, wire.to_wire(request)])

    async def cast(self, request: Any) -> None:
        """Send ``request``, waiting for room on the way."""
        while True:
            try:
                self.cast_nowait(request)
                return
            except trio.WouldBlock:
                pass
            try:
                route = self.node.route(self.name)
            except ClusterUnavailable:
                continue  # refused on the next try
            if isinstance(route, LocalAddress):
                if type(request) is Detach and not self.node.is_tracked(self.name, request.conn_id):
                    return
                await route.cast(request)
                self._sent_locally(request)
                return
            await self.node.flushed()

    def _sent_locally(self, request: Any) -> None:
        kind = type(request)
        if kind is Attach:
            self.node.track(self.name, request.conn_id, request.peer, remote=False)
        elif kind is Detach:
            self.node.untrack(self.name, request.conn_id)

    async def call(self, request: Any) -> Any:
        """Send ``request`` and wait for the reply. Raises ``ClusterUnavailable``."""
        route = self.node.route(self.name)
        if isinstance(route, LocalAddress):
            return await route.call(request)
        return await self.node.call(route, self.name, request)

    def _refuse(self, request: Any) -> None:
        kind = type(request)
        if kind is Attach:
            request.peer.close(CLOSE_SERVICE_RESTART)
        elif kind is Inbound:
            peer = self.node.peer_of(self.name, request.conn_id)
            if peer is not None:
                peer.answer_nowait(_UNAVAILABLE)
                peer.handled()
        elif kind is Detach:
            self.node.untrack(self.name, request.conn_id)
        else:
            raise ClusterUnavailable("Cluster unavailable")
