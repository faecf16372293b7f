"""The server's Prometheus metrics (docs/operations.md, "Metrics"), on ``prometheus_client``.

One ``Metrics`` per server: its own ``CollectorRegistry``, never the library's global one, so
that several servers in one process (the tests) count apart. The places that count are handed
the object, or a part of it, when they are built: ``EndpointMetrics`` for a WebSocket endpoint,
a pre-bound histogram child for a service or a store. Code that builds a service or a store
without a ``Metrics`` at hand (the cluster's services, the plain ASGI deployment) takes the one
``as_current`` made current for the server's tasks (``current``).

Hot path: a counted frame costs a dictionary look-up and one increment of a cell bound at
start (``CounterCells``), never ``labels(...)``; label values come only from bounded tables
(the contract's message types, error codes and close codes), never from a client's text, with
``other`` and ``invalid`` for the rest. Services time one request in ``HANDLING_SAMPLE``.

What ``/stats`` reports (the services' registries, the chunk index's counters, the cluster's
section) is not counted twice: ``_ScrapeCollector`` reads it at scrape time, from the same
``collect_stats`` ``/stats`` uses, with the live WebSocket connections, inbox depths and
trio's task count.

Invariants:
- every family has HELP text, and every counter's name ends in ``_total``;
- a scrape's ``/stats`` snapshot is set and read within one synchronous ``generate_latest``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from zajel.logs import context
from zajel.protocol import channels, chunks, errors, relay, signaling
from zajel.protocol.frames import Invalid

log = logging.getLogger("zajel.metrics")

# The text format the endpoint serves (0.0.4: what every Prometheus reads).
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

# ``<name>_created`` series would double the output for a timestamp no alert needs.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library

ENDPOINTS: Final = ("signal", "relay")
OTHER: Final = "other"
INVALID: Final = "invalid"

# What a decoded frame counts as, by its class (docs/protocol/signaling.md, relay.md,
# channels.md, chunks.md). ``Relay`` carries its own type (offer, answer, ice_candidate,
# call_*); ``pair_accept`` and ``pair_reject`` decode to the class of ``pair_response`` and count
# as it; an ``Invalid`` frame counts as ``other`` when its type is unknown, else ``invalid``.
_CHUNK_KINDS: Final[dict[type, str]] = {
    chunks.ChunkAnnounce: "chunk_announce",
    chunks.ChunkRequest: "chunk_request",
    chunks.ChunkPush: "chunk_push",
}
INBOUND_KINDS: Final[dict[str, dict[type, str]]] = {
    "signal": {
        signaling.Register: "register",
        signaling.PairRequest: "pair_request",
        signaling.PairAnswer: "pair_response",
        signaling.Ping: "ping",
        channels.OwnChannel: "channel-owner-register",
        channels.Subscribe: "channel-subscribe",
        channels.Unsubscribe: "channel-unsubscribe",
        channels.Upstream: "upstream-message",
        channels.StreamStart: "stream-start",
        channels.StreamFrame: "stream-frame",
        channels.StreamEnd: "stream-end",
        **_CHUNK_KINDS,
    },
    "relay": {
        relay.Register: "register",
        relay.UpdateLoad: "update_load",
        relay.GetRelays: "get_relays",
        relay.Heartbeat: "heartbeat",
        relay.Ping: "ping",
        relay.RegisterRendezvous: "register_rendezvous",
        **_CHUNK_KINDS,
    },
}
# The types of the frames the server sends (the contract's server-to-client messages, and the
# relayed signaling types).
OUTBOUND_TYPES: Final = tuple(
    sorted(
        {
            "error",
            "registered",
            "pong",
            "pair_incoming",
            "pair_matched",
            "pair_rejected",
            "pair_timeout",
            "pair_expiring",
            "pair_error",
            "peer_joined",
            "peer_left",
            "relays",
            "load_updated",
            "heartbeat_ack",
            "rendezvous_result",
            "rendezvous_match",
            "chunk_announce_ack",
            "chunk_available",
            "chunk_data",
            "chunk_error",
            "chunk_not_found",
            "chunk_pull",
            "chunk_pulling",
            "chunk_push_ack",
            "channel-owner-registered",
            "channel-subscribed",
            "channel-unsubscribed",
            "upstream-message",
            "upstream-ack",
            "stream-start",
            "stream-started",
            "stream-frame",
            "stream-end",
            "stream-ended",
            "reply",
            *signaling.RELAY_TYPES,
        }
    )
)
# Every machine code of ``zajel.protocol.errors``.
ERROR_CODES: Final = tuple(
    sorted(
        value
        for name, value in vars(errors).items()
        if name.isupper() and isinstance(value, str) and not name.startswith("_")
    )
)
# Close codes (RFC 6455 section 7.4.1, docs/protocol/conventions.md, "Close codes"); 1006: the
# connection ended without a close frame.
CLOSE_CODES: Final = (1000, 1001, 1002, 1005, 1006, 1007, 1008, 1009, 1011, 1013)
# Why the server refused something (docs/operations.md, "Limits and back-pressure").
REFUSALS: Final = {
    "rate_limit": "a WebSocket frame over its connection's token bucket (answered rate_limited)",
    "http_rate_limit": "an HTTP request over its IP's budget (429)",
    "ws_connection_cap": "a WebSocket handshake over the total or per-IP connection cap (503)",
    "http_connection_cap": "a TCP connection over its address's HTTP connection cap (503)",
    "shutting_down": "a WebSocket handshake during shutdown (503)",
    "cluster_unavailable": "a WebSocket handshake while Redis is unreachable (503)",
    "unknown_path": "a WebSocket handshake on a path that is no endpoint (404)",
    "bad_handshake": "a request to an endpoint that is no valid WebSocket handshake (400, 426)",
}

# Seconds. A service handles a frame in microseconds; a commit waits for a disk or Redis.
SERVICE_BUCKETS: Final = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
)  # fmt: skip
STORE_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
HTTP_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

# Services time one request in this many (a power of two): ``zajel_service_handling_seconds``.
HANDLING_SAMPLE: Final = 16

_CURRENT: contextvars.ContextVar[Metrics | None] = contextvars.ContextVar(
    "zajel_metrics", default=None
)


def current() -> Metrics | None:
    """The ``Metrics`` of the server whose task this is (``as_current``), if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def as_current(metrics: Metrics) -> Iterator[Metrics]:
    """Make ``metrics`` current for this task and every task it starts within the block."""
    token = _CURRENT.set(metrics)
    try:
        yield metrics
    finally:
        _CURRENT.reset(token)


class Observe(Protocol):
    """A histogram child's ``observe``."""

    def __call__(self, amount: float) -> None: ...


@attrs.frozen
class Scrape:
    """What ``/stats`` knows at one scrape: its sections, the parts that did not answer, and
    the cluster's section (``None`` on a single node)."""

    sections: Mapping[str, Mapping[str, int]]
    failing: Sequence[str]
    cluster: Mapping[str, Any] | None = None


class CounterCells:
    """A counter family whose children are plain one-item lists, bound at start and read at
    scrape time: ``cell[0] += 1`` costs a tenth of a ``prometheus_client`` child's ``inc``
    (which takes a lock), for the counters of every frame. Only the server's trio thread
    counts; a scrape only reads."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._cells: dict[tuple[str, ...], list[int]] = {}

    def cell(self, *labels: str) -> list[int]:
        """The cell of ``labels`` (made at 0 the first time)."""
        return self._cells.setdefault(labels, [0])

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, cell in self._cells.items():
            family.add_metric(labels, cell[0])
        return family


class EndpointMetrics:
    """The counters of one WebSocket endpoint, with every label child bound at start."""

    def __init__(self, metrics: Metrics, endpoint: str) -> None:
        self.endpoint = endpoint
        received = metrics.messages_in
        names = {*INBOUND_KINDS[endpoint].values(), INVALID, OTHER}
        if endpoint == "signal":
            names |= signaling.RELAY_TYPES
        self._received = {name: received.cell(endpoint, name) for name in sorted(names)}
        self._by_class = {
            kind: self._received[name] for kind, name in INBOUND_KINDS[endpoint].items()
        }
        self._received_other = self._received[OTHER]
        self._received_invalid = self._received[INVALID]
        sent = metrics.messages_out
        self._sent = {name: sent.cell(endpoint, name) for name in (*OUTBOUND_TYPES, OTHER)}
        self._sent_other = self._sent[OTHER]
        self._sent_error = self._sent["error"]
        self._errors = {code: metrics.errors.cell(endpoint, code) for code in (*ERROR_CODES, OTHER)}
        self._closes = {
            name: metrics.closes.cell(endpoint, name)
            for name in (*(str(code) for code in CLOSE_CODES), OTHER)
        }
        self._slow_consumers = metrics.slow_consumers.cell(endpoint)
        self.connections = metrics.connections.labels(endpoint)
        self.rate_limited = metrics.refusals.labels("rate_limit")

    def received(self, message: object) -> None:
        """Count one decoded frame by its type."""
        cell = self._by_class.get(message.__class__)
        if cell is None:
            if isinstance(message, signaling.Relay):
                cell = self._received.get(message.type, self._received_other)
            elif isinstance(message, Invalid) and message.error.code != errors.UNKNOWN_TYPE:
                cell = self._received_invalid
            else:
                cell = self._received_other
        cell[0] += 1

    def sent(self, text: str) -> None:
        """Count one frame queued to a client, by the type its text starts with (every frame
        the server encodes starts ``{"type":"…"``), and an error frame by its code."""
        cell = None
        if text.startswith('{"type":"'):
            end = text.find('"', 9, 64)
            if end > 0:
                cell = self._sent.get(text[9:end])
        if cell is None:
            cell = self._sent_other
        cell[0] += 1
        if cell is self._sent_error:
            start = text.find('"code":"', 15, 64) + 8
            end = text.find('"', start, start + 64) if start > 7 else -1
            self._errors.get(text[start:end] if end > 0 else OTHER, self._errors[OTHER])[0] += 1

    def slow_consumer(self) -> None:
        """Count one client dropped as a slow consumer."""
        self._slow_consumers[0] += 1

    def closed(self, code: int | None) -> None:
        """Count one connection's end by its close code (``None``: 1006, no close frame)."""
        self._closes.get("1006" if code is None else str(code), self._closes[OTHER])[0] += 1


class Metrics:
    """Every metric of one server, in a registry of its own."""

    def __init__(self, *, version: str, process: bool = True) -> None:
        registry = self.registry = CollectorRegistry()
        self._scrape_source: Callable[[], Awaitable[Scrape]] | None = None
        self._inboxes: dict[str, list[trio.MemoryReceiveChannel[Any]]] = {}
        # First in the output: the families read at scrape time, led by zajel_up.
        self._collector = _ScrapeCollector(self)
        registry.register(self._collector)
        # The counters of every frame and connection: plain cells (``CounterCells``).
        self.messages_in = CounterCells(
            "zajel_websocket_messages_in",
            "WebSocket frames received and decoded, by endpoint and message type (invalid: "
            "failed a check; other: a type the endpoint does not know; frames refused by the "
            "rate limit are counted in zajel_refusals_total instead).",
            ["endpoint", "type"],
        )
        self.messages_out = CounterCells(
            "zajel_websocket_messages_out",
            "WebSocket frames queued to clients, by endpoint and message type (other: any type "
            "not in the contract's list).",
            ["endpoint", "type"],
        )
        self.errors = CounterCells(
            "zajel_websocket_errors",
            'WebSocket {"type":"error"} frames sent, by endpoint and error code.',
            ["endpoint", "code"],
        )
        self.closes = CounterCells(
            "zajel_websocket_closes",
            "WebSocket connections ended, by endpoint and close code (the server's own choice, "
            "else the client's; 1006: ended without a close frame).",
            ["endpoint", "code"],
        )
        self.slow_consumers = CounterCells(
            "zajel_websocket_slow_consumer_drops",
            "Clients dropped as slow consumers (close code 1013), by endpoint.",
            ["endpoint"],
        )
        cells = (
            self.messages_in,
            self.messages_out,
            self.errors,
            self.closes,
            self.slow_consumers,
        )
        registry.register(_CellsCollector(cells))
        self.refusals = Counter(
            "zajel_refusals",
            "Requests, frames and connections the server refused, by reason: "
            + "; ".join(f"{name}: {meaning}" for name, meaning in REFUSALS.items())
            + ".",
            ["reason"],
            registry=registry,
        )
        for reason in REFUSALS:
            self.refusals.labels(reason)
        self.connections = Gauge(
            "zajel_websocket_connections",
            "Open WebSocket connections, by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        self.service_seconds = Histogram(
            "zajel_service_handling_seconds",
            "Time a service took to handle one request (its handler, in its own task), by "
            f"service; sampled: one request in {HANDLING_SAMPLE} is timed, so _count is about "
            f"1/{HANDLING_SAMPLE} of the requests handled.",
            ["service"],
            buckets=SERVICE_BUCKETS,
            registry=registry,
        )
        self.store_seconds = Histogram(
            "zajel_store_commit_seconds",
            "Time one successful store commit took, from the call to its end (sqlite: one "
            "transaction on disk; redis: one script call), by store.",
            ["store"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.http_seconds = Histogram(
            "zajel_http_request_duration_seconds",
            "Time from an HTTP request's routing to its response, by route template "
            "(unmatched: no route).",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.http_responses = Counter(
            "zajel_http_responses",
            "HTTP responses, by route template and status code.",
            ["route", "status"],
            registry=registry,
        )
        Gauge(
            "zajel_build_info",
            "The running server: its version and Python's (always 1).",
            ["version", "python"],
            registry=registry,
        ).labels(version, ".".join(map(str, sys.version_info[:3]))).set(1)
        if process and sys.platform == "linux":
            ProcessCollector(registry=registry)
        self.endpoints = {name: EndpointMetrics(self, name) for name in ENDPOINTS}

    # -- hooks for the places that count -----------------------------------------------------

    def service_timer(self, service: str) -> Observe:
        """The ``observe`` of ``service``'s handling time."""
        return self.service_seconds.labels(service).observe

    def store_timer(self, store: str) -> Observe:
        """The ``observe`` of ``store``'s commit time (``sqlite``, ``redis``)."""
        return self.store_seconds.labels(store).observe

    def refused(self, reason: str) -> None:
        """Count one refusal; ``reason`` is a key of ``REFUSALS``."""
        self.refusals.labels(reason).inc()

    @contextlib.contextmanager
    def watch_inbox(self, service: str, inbox: trio.MemoryReceiveChannel[Any]) -> Iterator[None]:
        """Report ``inbox``'s depth as ``service``'s while the block runs."""
        watched = self._inboxes.setdefault(service, [])
        watched.append(inbox)
        try:
            yield
        finally:
            watched.remove(inbox)

    # -- scrapes -------------------------------------------------------------------------------

    def scrape_from(self, source: Callable[[], Awaitable[Scrape]]) -> None:
        """Where a scrape reads what ``/stats`` knows (the app's ``collect_stats``)."""
        self._scrape_source = source

    async def exposition(self) -> bytes:
        """The text of one scrape (Prometheus text format 0.0.4)."""
        scrape = await self._scrape_source() if self._scrape_source is not None else None
        # Set and read within one synchronous call: a concurrent scrape cannot interleave.
        self._collector.scrape = scrape
        try:
            return generate_latest(self.registry)
        finally:
            self._collector.scrape = None


# HELP of the ``/stats`` numbers (docs/operations.md, "Health checks and metrics"); a number
# without an entry gets a generic one.
STATS_HELP: Final = {
    "relays": {
        "totalPeers": "Relays registered on /relay.",
        "totalCapacity": "The relays' announced maxConnections, summed.",
        "totalConnected": "The relays' reported connectedCount, summed.",
        "availableRelays": "Relays under half of their capacity, the ones offered to peers.",
    },
    "rendezvous": {
        "dailyPoints": "Daily meeting points with entries.",
        "hourlyTokens": "Hourly tokens with entries.",
        "totalEntries": "Rendezvous entries, points and tokens together.",
        "dailyEntries": "Entries at daily meeting points.",
        "hourlyEntries": "Entries at hourly tokens.",
    },
    "chunks": {
        "trackedChunks": "Chunks with at least one source.",
        "totalSources": "Chunk sources (a peer announcing a chunk).",
        "cachedChunks": "Chunks in the cache.",
        "pendingRequests": "Chunk requests waiting for a pull.",
        "cacheHits": "Chunk requests answered from the cache.",
        "cacheMisses": "Chunk requests the cache could not answer.",
        "pullsSent": "chunk_pull frames sent to sources.",
    },
    "channels": {
        "owned": "Channels with their owner connected.",
        "subscriptions": "Channel subscriptions.",
        "queuedUpstream": "Upstream messages queued for absent owners.",
        "liveStreams": "Live streams.",
    },
    "signaling": {
        "connections": "Connections the signaling room knows.",
        "pairingCodes": "Registered pairing codes.",
        "pendingPairRequests": "Pair requests waiting for an answer.",
    },
    "servers": {
        "totalServers": "Server registry entries (stale ones until the sweep).",
        "liveServers": "Server registry entries under 5 minutes old (listed by GET /servers).",
    },
    "attestation": {
        "devices": "Attested devices.",
        "references": "Build references uploaded.",
        "openChallenges": "Open attestation challenges.",
        "flaggedDevices": "Devices flagged for too many challenges.",
    },
}
# ``/stats`` numbers that only grow: exported as counters (``…_total``).
STATS_COUNTERS: Final = {
    ("chunks", "cacheHits"),
    ("chunks", "cacheMisses"),
    ("chunks", "pullsSent"),
}
CLUSTER_HOP_HELP: Final = {
    "messages_out": "Messages this node sent other nodes.",
    "messages_in": "Messages this node received from other nodes.",
    "batches_out": "PUBLISH batches this node sent.",
    "batches_in": "Batches this node received.",
    "bytes_out": "Bytes this node published to other nodes.",
    "bytes_in": "Bytes this node received from other nodes.",
    "calls": "Calls this node made to services on other nodes.",
    "call_timeouts": "Calls to other nodes that missed their deadline.",
    "direct_out": "Signaling frames this edge relayed by its routes.",
    "direct_in": "Signaling frames delivered here that another edge relayed by its routes.",
    "direct_refused": "Frames relayed by routes that were no longer right (peer_not_found).",
    "busy_refused": "Calls from other nodes refused here because the service's inbox was full.",
}


def snake(name: str) -> str:
    """``totalPeers`` -> ``total_peers``."""
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name)


class _ScrapeCollector:
    """The families read at scrape time: ``/stats`` as it is now (``Metrics.exposition``),
    inbox depths and trio's task count."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.scrape: Scrape | None = None

    def collect(self) -> Iterable[Metric]:
        scrape = self.scrape
        if scrape is not None:
            yield _gauge(
                "zajel_up",
                "1 when every service and the store answered, else 0.",
                (not scrape.failing),
            )
            yield from _stats(scrape.sections)
            if scrape.cluster is not None:
                yield from _cluster(scrape.cluster)
            yield _gauge(
                "zajel_time_seconds", "The server's wall clock at the scrape.", time.time()
            )
        depth = GaugeMetricFamily(
            "zajel_service_inbox_depth",
            "Requests waiting in each service's inbox (services running on this node).",
            labels=["service"],
        )
        for service, inboxes in sorted(self._metrics._inboxes.items()):
            if inboxes:
                used = sum(inbox.statistics().current_buffer_used for inbox in inboxes)
                depth.add_metric([service], used)
        yield depth
        with contextlib.suppress(RuntimeError):  # outside trio: a scrape from another thread
            yield _gauge(
                "zajel_trio_tasks",
                "Live trio tasks of the server.",
                trio.lowlevel.current_statistics().tasks_living,
            )


class _CellsCollector:
    def __init__(self, families: Sequence[CounterCells]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return [family.collect() for family in self._families]


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=float(value))


def _stats(sections: Mapping[str, Mapping[str, int]]) -> Iterator[Metric]:
    """Every number of the ``/stats`` sections, as ``zajel_<section>_<field in snake_case>``."""
    for section, values in sections.items():
        helps = STATS_HELP.get(section, {})
        for field, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name = f"zajel_{section}_{snake(field)}"
            help_text = helps.get(field, f"/stats {section}.{field}.")
            if (section, field) in STATS_COUNTERS:
                yield CounterMetricFamily(name, help_text, value=value)
            else:
                yield _gauge(name, help_text, value)


def _cluster(status: Mapping[str, Any]) -> Iterator[Metric]:
    """This node's part of the cluster and its cross-node hop (docs/cluster.md, "Operators")."""
    yield _gauge(
        "zajel_cluster_nodes",
        "Live nodes of the cluster, as this node last read them.",
        status["nodes"],
    )
    yield _gauge(
        "zajel_cluster_degraded", "1 while this node cannot reach Redis.", status["degraded"]
    )
    owned = GaugeMetricFamily(
        "zajel_cluster_owned", "Services this node runs (1) or not (0).", labels=["service"]
    )
    for service, owner in status["owners"].items():
        owned.add_metric([service], float(owner == status["node"]))
    yield owned
    hop = status["hop"]
    for key, value in hop.items():
        # Every integer of the hop's snapshot is a counter, those added later too.
        if isinstance(value, int) and not isinstance(value, bool):
            help_text = CLUSTER_HOP_HELP.get(key, f"The cross-node hop's {key} (/stats).")
            yield CounterMetricFamily(f"zajel_cluster_hop_{key}", help_text, value=value)
    for quantile, value in (hop.get("latency_ms") or {}).items():
        if isinstance(value, int | float) and math.isfinite(value):
            yield _gauge(
                f"zajel_cluster_hop_latency_{quantile}_seconds",
                f"The hop's latency, {quantile} of the last samples.",
                value / 1000,
            )


# -- /metrics on its own address (METRICS_BIND) ------------------------------------------------

# A scraper's request head: at most this many bytes, within this many seconds; the answer is
# written within the same time. More concurrent connections than this are closed unanswered.
HEAD_MAX: Final = 8 * 1024
TIMEOUT_S: Final = 5.0
MAX_CONNECTIONS: Final = 16
_HEADERS: Final = (
    b"cache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n"
)


async def serve_metrics(
    metrics: Metrics,
    listener: trio.SocketListener,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` on ``listener`` (docs/operations.md, "Metrics"): one request per
    connection, then close. Any other path is 404, any other method 405. Runs until cancelled.
    """
    open_connections = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal open_connections
        if open_connections >= MAX_CONNECTIONS:
            await trio.aclose_forcefully(stream)
            return
        open_connections += 1
        try:
            with trio.move_on_after(TIMEOUT_S):
                await _answer(metrics, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            open_connections -= 1
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, [listener])
        task_status.started()


async def _answer(metrics: Metrics, stream: trio.SocketStream) -> None:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < HEAD_MAX:
        data = await stream.receive_some(HEAD_MAX - len(head))
        if not data:
            return
        head += data
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        await _respond(stream, b"400 Bad Request", b"application/json", b'{"error":"Bad Request"}')
        return
    method, path = parts[0], parts[1].split(b"?", 1)[0]
    if path != b"/metrics":
        await _respond(stream, b"404 Not Found", b"application/json", b'{"error":"Not Found"}')
    elif method != b"GET":
        await _respond(
            stream,
            b"405 Method Not Allowed",
            b"application/json",
            b'{"error":"Method Not Allowed"}',
            b"allow: GET\r\n",
        )
    else:
        body = await metrics.exposition()
        await _respond(stream, b"200 OK", CONTENT_TYPE.encode(), body)
    log.debug("metrics request", extra=context(path=path.decode("latin-1")[:64]))


async def _respond(
    stream: trio.SocketStream, status: bytes, content_type: bytes, body: bytes, extra: bytes = b""
) -> None:
    await stream.send_all(
        b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n%s"
        % (status, content_type, len(body), _HEADERS, extra, body)
    )
