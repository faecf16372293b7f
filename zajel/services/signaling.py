"""SignalingRoom: pairing codes, consent pairing, and WebRTC/call relay
(docs/protocol/signaling.md).

``SignalingState`` is the pure state: it takes decoded messages and the current time and
returns the frames to send, as ``(conn_id, frame)`` pairs. ``SignalingRoom`` is the service
that drives it from its task and delivers those frames to the connections' queues.

Invariants the state keeps:
- A live code belongs to exactly one connection, and a connection holds at most one code.
- Matches are symmetric: ``b in codes[a].matches`` iff ``a in codes[b].matches``.
- A pending request exists only between two live codes; it ends when either side goes.
- A reserved code (reconnect grace) has no connection and keeps its matches for 30 s. Only its
  own device gets them back: the same public key, and either the code's reconnect token or
  (older clients, which send none) the client IP the code was held from. The public key alone
  proves nothing, since every ``pair_incoming`` hands it out. After 30 s the code is forgotten
  and its partners drop it.
- A code's reconnect token is made when the code is registered afresh and stays the same while
  the code is held or reserved; it goes only to the code's own connection in ``registered``,
  is compared in constant time and is never logged.

Limits: ``pair_request`` is limited per connection (by default 10 in any 60 s) and per client
IP over all of that IP's connections (by default 30 in any 60 s), so opening new connections
buys no new probes. A request refused by either limit counts against neither. An IP's window
outlives its connections (that is the point) but not its last minute of requests: memory follows
the IPs that asked within the last minute, each holding at most its limit of timestamps
(``KeyedSlidingWindow``).

Timers (all on trio's clock): a pair request warns both sides at 90 s and times out at 120 s;
a reservation ends 30 s after the disconnect.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Any, Final

import attrs

from zajel.config import Config
from zajel.logs import CodeRedactor, context
from zajel.protocol import errors
from zajel.protocol.frames import Invalid
from zajel.protocol.limits import KeyedSlidingWindow, SlidingWindow
from zajel.protocol.signaling import (
    PAIR_EXPIRING_WARNING_S,
    PAIR_REQUEST_LIFETIME_S,
    RECONNECT_GRACE_S,
    PairAnswer,
    PairRequest,
    Ping,
    Register,
    Relay,
    SignalMessage,
)
from zajel.services._deadlines import Deadlines
from zajel.services._index import discard as _discard
from zajel.services._peers import Attach, ConnId, Detach, Identity, Inbound, Out, PeerTable

log = logging.getLogger("zajel.signaling")


PAIR_ERROR_UNPROCESSABLE: Final = "Pair request could not be processed"
PAIR_ERROR_NO_REQUEST: Final = "No pending request from this peer"
_REDACT_ALWAYS: Final = CodeRedactor(enabled=True)
_EXPIRES_IN_MS: Final = int(PAIR_REQUEST_LIFETIME_S * 1000)
_REMAINING_S: Final = int(PAIR_REQUEST_LIFETIME_S - PAIR_EXPIRING_WARNING_S)
PAIR_REQUEST_WINDOW_S: Final = 60.0
# Frames whose recipient's relay routes may have changed (``SignalingRoom._announce_routes``).
_ROUTE_EVENTS: Final = frozenset({"registered", "pair_matched", "peer_left", "peer_joined"})


@attrs.frozen
class SignalingStats:
    connections: int
    pairing_codes: int
    pending_pair_requests: int

    def to_json(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "pairingCodes": self.pairing_codes,
            "pendingPairRequests": self.pending_pair_requests,
        }


def _new_token() -> str:
    # 256 random bits: not guessable, and not derived from anything a client can see.
    return secrets.token_urlsafe(32)


@attrs.define
class _Code:
    """A pairing code: live (``conn`` set) or reserved during the reconnect grace.

    ``ip`` is the client IP key of the connection that holds (or last held) it: an older client
    without ``token`` may reclaim a reserved code from there only.
    """

    conn: ConnId | None
    public_key: str | None
    ip: str
    token: str = attrs.field(factory=_new_token, repr=False)
    matches: set[str] = attrs.field(factory=set)


@attrs.define
class _Connection:
    ip: str
    pair_requests: SlidingWindow


@attrs.define
class _Pending:
    requester: str
    target: str
    proposed_name: str | None


# Timer keys: ("warn"|"timeout", requester, target) or ("grace", code, "").
_TimerKey = tuple[str, str, str]


class SignalingState:
    """The room's state. No I/O: every method takes ``now`` and returns frames to send."""

    def __init__(
        self,
        *,
        pair_requests_per_minute: int = 10,
        pair_requests_per_minute_per_ip: int = 30,
        pending_per_target: int = 10,
        redact: Callable[[str | None], str] = _REDACT_ALWAYS,
    ) -> None:
        self._pair_requests_per_minute = pair_requests_per_minute
        self._pair_requests_per_minute_per_ip = pair_requests_per_minute_per_ip
        self._pending_per_target = pending_per_target
        self._redact = redact
        self._codes: dict[str, _Code] = {}
        self._conn_codes: dict[ConnId, str] = {}
        # Every open connection, with its IP key and pair-request limiter.
        self._connections: dict[ConnId, _Connection] = {}
        # Per client IP, over all its connections, open or closed.
        self._ip_windows = KeyedSlidingWindow(
            pair_requests_per_minute_per_ip, PAIR_REQUEST_WINDOW_S
        )
        # IPs refused since their last counted request: one log line per run of refusals.
        self._refused_ips: set[str] = set()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._incoming: dict[str, set[str]] = {}  # target -> requesters
        self._outgoing: dict[str, set[str]] = {}  # requester -> targets
        self._timers: Deadlines[_TimerKey] = Deadlines()

    # -- connections ---------------------------------------------------------------------

    def connect(self, conn: ConnId, ip: str) -> None:
        """``conn`` opened from the client IP key ``ip`` (``Attach.ip``)."""
        window = SlidingWindow(self._pair_requests_per_minute, PAIR_REQUEST_WINDOW_S)
        self._connections[conn] = _Connection(ip, window)

    def disconnect(self, conn: ConnId, now: float) -> list[Out]:
        """Clean up after ``conn``, whatever closed it. Unknown connections are ignored."""
        self._connections.pop(conn, None)
        code = self._conn_codes.get(conn)
        if code is None:
            return []
        return self._release(code, now, grace=True)

    def handle(self, conn: ConnId, message: SignalMessage, now: float) -> list[Out]:
        """Answer one message from ``conn``, checking registration before fields."""
        if conn not in self._connections:
            return []  # already disconnected (e.g. dropped as a slow consumer)
        code = self._conn_codes.get(conn)
        if message.needs_registration and code is None:
            return [(conn, errors.not_registered().to_frame())]
        if isinstance(message, Invalid):
            return [(conn, message.error.to_frame())]
        if isinstance(message, Relay):
            assert code is not None
            return self._relay(conn, code, message)
        if isinstance(message, Register):
            return self._register(conn, message, now)
        if isinstance(message, PairRequest):
            assert code is not None
            return self._pair_request(conn, code, message, now)
        if isinstance(message, PairAnswer):
            assert code is not None
            return self._pair_answer(conn, code, message)
        if isinstance(message, Ping):
            return [(conn, {"type": "pong"})]
        raise TypeError(f"not a signaling message: {message!r}")

    # -- timers --------------------------------------------------------------------------

    def next_deadline(self) -> float:
        return self._timers.next_deadline()

    def expire(self, now: float) -> list[Out]:
        outs: list[Out] = []
        self._forget_quiet_ips(now)
        for kind, first, second in self._timers.pop_due(now):
            if kind == "grace":
                entry = self._codes.get(first)
                if entry is not None and entry.conn is None:
                    log.debug("reconnect grace ended", extra=context(code=self._redact(first)))
                    self._forget(first)
                continue
            pending = self._pending.get((first, second))
            if pending is None:
                continue
            requester, target = self._live_conn(first), self._live_conn(second)
            if kind == "warn":
                for conn, other in ((requester, second), (target, first)):
                    if conn is not None:
                        outs.append((conn, _pair_expiring(other)))
            else:
                self._drop_pending(first, second)
                if requester is not None:
                    outs.append((requester, {"type": "pair_timeout", "peerCode": second}))
        return outs

    # -- queries -------------------------------------------------------------------------

    def identity(self, conn: ConnId) -> Identity | None:
        """Who ``conn`` is registered as: its pairing code and the public key it gave."""
        code = self._conn_codes.get(conn)
        if code is None:
            return None
        return Identity("signal", code, self._codes[code].public_key)

    def relay_routes(self, conn: ConnId) -> tuple[str | None, dict[str, ConnId]]:
        """Where ``conn`` may relay now: its code and each matched code's live connection
        (``None`` and nothing while unregistered). A cluster edge relays by these itself
        (docs/cluster.md, "Direct relay")."""
        code = self._conn_codes.get(conn)
        if code is None:
            return None, {}
        routes: dict[str, ConnId] = {}
        for partner in self._codes[code].matches:
            partner_conn = self._live_conn(partner)
            if partner_conn is not None:
                routes[partner] = partner_conn
        return code, routes

    def statistics(self) -> SignalingStats:
        return SignalingStats(
            connections=len(self._connections),
            pairing_codes=len(self._conn_codes),
            pending_pair_requests=len(self._pending),
        )

    def sizes(self) -> dict[str, int]:
        """Entries in every internal map (memory-bound tests expect all zero when idle)."""
        return {
            "codes": len(self._codes),
            "conn_codes": len(self._conn_codes),
            "connections": len(self._connections),
            "ip_windows": len(self._ip_windows),
            "refused_ips": len(self._refused_ips),
            "pending": len(self._pending),
            "incoming": len(self._incoming),
            "outgoing": len(self._outgoing),
            "timers": len(self._timers),
        }

    # -- messages ------------------------------------------------------------------------

    def _register(self, conn: ConnId, message: Register, now: float) -> list[Out]:
        code, key = message.pairing_code, message.public_key
        entry = self._codes.get(code)
        if entry is not None and entry.conn != conn and not self._may_reclaim(entry, conn, message):
            log.info("pairing code in use", extra=context(code=self._redact(code)))
            return [(conn, _error(errors.PAIRING_CODE_IN_USE, "Pairing code already in use"))]
        outs: list[Out] = []
        current = self._conn_codes.get(conn)
        if current is not None and current != code:
            outs += self._release(current, now, grace=False)
        ip = self._connections[conn].ip
        joined: list[Out] = []
        if entry is None:
            entry = self._codes[code] = _Code(conn, key, ip)
        elif entry.conn is None:  # its own device, back within the grace time
            entry.conn, entry.ip = conn, ip
            self._timers.cancel(("grace", code, ""))
            for partner in sorted(entry.matches):
                partner_conn = self._live_conn(partner)
                if partner_conn is not None:
                    joined.append((partner_conn, {"type": "peer_joined", "pairingCode": code}))
            log.info("peer reconnected", extra=context(code=self._redact(code)))
        else:
            entry.public_key = key
        self._conn_codes[conn] = code
        outs.append(
            (conn, {"type": "registered", "pairingCode": code, "reconnectToken": entry.token})
        )
        log.debug("registered", extra=context(code=self._redact(code), conn=conn))
        return outs + joined

    def _may_reclaim(self, entry: _Code, conn: ConnId, message: Register) -> bool:
        """True when ``message`` from ``conn`` is the reserved ``entry``'s own device."""
        if entry.conn is not None or message.public_key is None:
            return False
        if message.public_key != entry.public_key:
            return False
        token = message.reconnect_token
        if token is None:  # an older client: only from where the code was held
            return self._connections[conn].ip == entry.ip
        # A token given must be right, from any IP. Bytes, since compare_digest takes only
        # ASCII text and a client may send anything.
        return hmac.compare_digest(token.encode("utf-8"), entry.token.encode("utf-8"))

    def _pair_request(
        self, conn: ConnId, sender: str, message: PairRequest, now: float
    ) -> list[Out]:
        if not self._allow_pair_request(conn, now):
            return [(conn, errors.rate_limited("Too many pair requests").to_frame())]
        target = message.target_code
        target_conn = self._live_conn(target)
        key = (sender, target)
        if (
            target == sender
            or target_conn is None
            or (
                key not in self._pending
                and len(self._incoming.get(target, ())) >= self._pending_per_target
            )
        ):
            # One answer for self, unknown and full targets, so codes cannot be probed.
            return [(conn, {"type": "pair_error", "error": PAIR_ERROR_UNPROCESSABLE})]
        self._pending[key] = _Pending(sender, target, message.proposed_name)
        self._incoming.setdefault(target, set()).add(sender)
        self._outgoing.setdefault(sender, set()).add(target)
        self._timers.schedule(("warn", sender, target), now + PAIR_EXPIRING_WARNING_S)
        self._timers.schedule(("timeout", sender, target), now + PAIR_REQUEST_LIFETIME_S)
        incoming: dict[str, Any] = {
            "type": "pair_incoming",
            "fromCode": sender,
            "fromPublicKey": self._codes[sender].public_key,
        }
        if message.proposed_name is not None:
            incoming["proposedName"] = message.proposed_name
        incoming["expiresIn"] = _EXPIRES_IN_MS
        log.debug(
            "pair request",
            extra=context(sender=self._redact(sender), target=self._redact(target)),
        )
        return [(target_conn, incoming)]

    def _allow_pair_request(self, conn: ConnId, now: float) -> bool:
        """Count one ``pair_request`` against the connection and its IP, if both allow it.

        The IP's window is checked first and written last, so that a request refused by either
        limit counts against neither.
        """
        self._forget_quiet_ips(now)
        connection = self._connections[conn]
        ip = connection.ip
        if not self._ip_windows.allows(ip, now):
            if ip not in self._refused_ips:
                self._refused_ips.add(ip)
                log.info("pair requests limited for an IP", extra=context(conn=conn))
            return False
        if not connection.pair_requests.allow(now):
            return False
        self._ip_windows.record(ip, now)
        self._refused_ips.discard(ip)
        return True

    def _forget_quiet_ips(self, now: float) -> None:
        """Forget the IPs with no counted request in the last minute."""
        self._refused_ips.difference_update(self._ip_windows.prune(now))

    def _pair_answer(self, conn: ConnId, responder: str, message: PairAnswer) -> list[Out]:
        requester = message.requester_code
        if (requester, responder) not in self._pending:
            return [(conn, {"type": "pair_error", "error": PAIR_ERROR_NO_REQUEST})]
        self._drop_pending(requester, responder)
        requester_entry = self._codes[requester]
        requester_conn = requester_entry.conn
        assert requester_conn is not None  # pending requests exist only between live codes
        if not message.accepted:
            log.debug("pair rejected", extra=context(requester=self._redact(requester)))
            return [(requester_conn, {"type": "pair_rejected", "peerCode": responder})]
        if (responder, requester) in self._pending:
            self._drop_pending(responder, requester)  # they asked each other: one match ends both
        responder_entry = self._codes[responder]
        requester_entry.matches.add(responder)
        responder_entry.matches.add(requester)
        log.info(
            "pair matched",
            extra=context(requester=self._redact(requester), responder=self._redact(responder)),
        )
        return [
            (requester_conn, _pair_matched(responder, responder_entry.public_key, True)),
            (conn, _pair_matched(requester, requester_entry.public_key, False)),
        ]

    def _relay(self, conn: ConnId, sender: str, message: Relay) -> list[Out]:
        target = message.target
        target_conn = self._live_conn(target) if target in self._codes[sender].matches else None
        if target_conn is None:
            return [(conn, peer_not_found(target))]
        return [(target_conn, relayed(message, sender))]

    # -- helpers -------------------------------------------------------------------------

    def _live_conn(self, code: str) -> ConnId | None:
        entry = self._codes.get(code)
        return None if entry is None else entry.conn

    def _release(self, code: str, now: float, *, grace: bool) -> list[Out]:
        """``code``'s connection is gone (or moved to another code): end what involves it."""
        entry = self._codes[code]
        for target in list(self._outgoing.get(code, ())):
            self._drop_pending(code, target)
        for requester in list(self._incoming.get(code, ())):
            self._drop_pending(requester, code)
        if entry.conn is not None:
            self._conn_codes.pop(entry.conn, None)
        entry.conn = None
        outs: list[Out] = []
        for partner in sorted(entry.matches):
            partner_conn = self._live_conn(partner)
            if partner_conn is not None:
                outs.append((partner_conn, {"type": "peer_left", "pairingCode": code}))
        if grace and entry.matches and entry.public_key is not None:
            self._timers.schedule(("grace", code, ""), now + RECONNECT_GRACE_S)
            log.debug("reconnect grace started", extra=context(code=self._redact(code)))
        else:
            self._forget(code)
        return outs

    def _forget(self, code: str) -> None:
        entry = self._codes.pop(code)
        for partner in entry.matches:
            partner_entry = self._codes.get(partner)
            if partner_entry is not None:
                partner_entry.matches.discard(code)

    def _drop_pending(self, requester: str, target: str) -> None:
        del self._pending[(requester, target)]
        _discard(self._incoming, target, requester)
        _discard(self._outgoing, requester, target)
        self._timers.cancel(("warn", requester, target))
        self._timers.cancel(("timeout", requester, target))


def relayed(message: Relay, sender: str) -> dict[str, Any]:
    """The frame a matched peer gets for ``message`` from the code ``sender``."""
    return {"type": message.type, "from": sender, "payload": message.payload}


def peer_not_found(target: str) -> dict[str, Any]:
    """The answer to a relay whose target is not a live, matched code."""
    return _error(errors.PEER_NOT_FOUND, f"Peer not found: {target}")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def _pair_expiring(peer_code: str) -> dict[str, Any]:
    return {"type": "pair_expiring", "peerCode": peer_code, "remainingSeconds": _REMAINING_S}


def _pair_matched(peer_code: str, peer_key: str | None, initiator: bool) -> dict[str, Any]:
    return {
        "type": "pair_matched",
        "peerCode": peer_code,
        "peerPublicKey": peer_key,
        "isInitiator": initiator,
    }


@attrs.frozen
class GetStats:
    """Request: reply with ``SignalingStats``."""


class SignalingRoom:
    """The service: owns a ``SignalingState`` and the connections' queues."""

    name = "signaling"

    def __init__(self, state: SignalingState) -> None:
        self._state = state
        self._peers = PeerTable(log)

    @classmethod
    def from_config(cls, config: Config) -> SignalingRoom:
        return cls(
            SignalingState(
                pair_requests_per_minute=config.pair_requests_per_minute,
                pair_requests_per_minute_per_ip=config.pair_requests_per_minute_per_ip,
                pending_per_target=config.pair_pending_per_target,
                redact=CodeRedactor(enabled=config.redacts_codes),
            )
        )

    @property
    def state(self) -> SignalingState:
        return self._state

    def handle(self, request: Any, now: float) -> Any:
        if type(request) is Inbound:
            try:
                outs = self._state.handle(request.conn_id, request.message, now)
            except Exception:
                # A bug must not cost the service: log it, tell the sender, keep serving.
                log.exception("message failed", extra=context(conn=request.conn_id))
                outs = [(request.conn_id, errors.internal_error().to_frame())]
            self._deliver(outs, now, sender=request.conn_id)
            kind = type(request.message)
            if kind is Register:
                identity = self._state.identity(request.conn_id)
                if identity is not None:
                    self._peers.identify(request.conn_id, identity)
            if kind is Register or kind is PairAnswer:
                self._announce_routes(outs)
            self._peers.handled(request.conn_id)
        elif type(request) is Attach:
            self._peers.attach(request.conn_id, request.peer)
            self._state.connect(request.conn_id, request.ip)
        elif type(request) is Detach:
            self._peers.detach(request.conn_id)
            outs = self._state.disconnect(request.conn_id, now)
            self._deliver(outs, now)
            self._announce_routes(outs)
        elif type(request) is GetStats:
            return self._state.statistics()
        else:
            raise TypeError(f"unknown request {type(request).__name__}")
        return None

    def next_deadline(self) -> float:
        return self._state.next_deadline()

    def expire(self, now: float) -> None:
        self._deliver(self._state.expire(now), now)

    def _announce_routes(self, outs: list[Out]) -> None:
        """Tell the connections whose relay routes these frames changed (and whose peer
        relays by routes: a cluster edge's) where they may relay now."""
        for conn in sorted({conn for conn, frame in outs if frame.get("type") in _ROUTE_EVENTS}):
            if self._peers.relays_by_routes(conn):
                code, routes = self._state.relay_routes(conn)
                self._peers.relay_routes(conn, code, routes)

    def _deliver(self, outs: list[Out], now: float, sender: ConnId | None = None) -> None:
        """Queue ``outs``; those for ``sender`` (whose frame produced them) are answers."""
        self._peers.deliver(outs, lambda conn: self._state.disconnect(conn, now), sender)
