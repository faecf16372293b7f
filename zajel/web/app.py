"""The app factory: HTTP routes and WebSocket endpoints over the services.

Routes translate only: a request becomes a service message and the reply becomes a response.
Protocol rules live in ``zajel.protocol`` and in the services.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import time
from importlib import metadata
from typing import Any

import trio
from quart import Response, g, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from zajel.config import Config
from zajel.logs import context
from zajel.metrics import CONTENT_TYPE, Metrics, Scrape
from zajel.metrics import current as current_metrics
from zajel.protocol import channels as channels_protocol
from zajel.protocol import chunks as chunks_protocol
from zajel.protocol import relay as relay_protocol
from zajel.protocol import signaling as signaling_protocol
from zajel.protocol.limits import KeyedWindowLimiter
from zajel.services import Address, CheckStore, Services, StoreOk
from zajel.services._mailbox import Unavailable
from zajel.services.attestation import GetAttestationStats
from zajel.services.chunk_index import ChunkStats, GetChunkStats
from zajel.services.relay import GetRelayStats, RelayStats
from zajel.services.servers import GetServerStats
from zajel.services.signaling import GetStats, SignalingStats
from zajel.web.attestation import add_attestation_routes
from zajel.web.headers import CORS_HEADERS, SECURITY_HEADERS
from zajel.web.limits import ConnectionCaps, client_ip, ip_key
from zajel.web.servers import add_server_routes
from zajel.web.sockets import Endpoint, SocketRouter
from zajel.web.transport import ConnectionTable

log = logging.getLogger("zajel.web")

HEALTH_TIMEOUT_S = 1.0
# Routes outside the per-IP HTTP budget (docs/operations.md, "Health checks and metrics").
UNMETERED_ROUTES = frozenset({"/health", "/metrics"})
ENDPOINTS = {
    "root": "GET /",
    "info": "GET /api/info",
    "health": "GET /health",
    "stats": "GET /stats",
    "metrics": "GET /metrics",
    "servers": "GET /servers",
    "registerServer": "POST /servers",
    "serverHeartbeat": "POST /servers/heartbeat",
    "unregisterServer": "DELETE /servers/{serverId}",
    "attestRegister": "POST /attest/register",
    "attestUploadReference": "POST /attest/upload-reference",
    "attestChallenge": "POST /attest/challenge",
    "attestVerify": "POST /attest/verify",
    "attestVersions": "GET /attest/versions",
    "attestSetVersions": "POST /attest/versions",
    "signaling": "WebSocket /signal",
    "relay": "WebSocket /relay",
}
FEATURES = [
    "pairing-codes",
    "consent-pairing",
    "webrtc-signaling",
    "call-signaling",
    "reconnect-grace",
    "relay-registry",
    "rendezvous",
    "chunk-distribution",
    "channels",
    "server-registry",
    "signed-bootstrap",
    "device-attestation",
    "web-fallback",
    "version-policy",
]


def package_version() -> str:
    try:
        return metadata.version("zajel")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``origin`` is on the allowlist; ``http://localhost:*`` allows any port."""
    for entry in allowed:
        if entry == origin:
            return True
        if entry.endswith(":*"):
            base = entry[:-2]
            port = origin[len(base) + 1 :] if origin.startswith(base + ":") else ""
            if port.isdigit():
                return True
    return False


def create_app(
    config: Config,
    services: Services,
    *,
    shutdown: trio.Event,
    connections: ConnectionTable | None = None,
    metrics: Metrics | None = None,
    metrics_listener: bool = False,
) -> QuartTrio:
    """The Quart-trio app for ``services``; setting ``shutdown`` closes every WebSocket (1001).

    ``connections``: the TCP connections of ``zajel serve``'s own accept loop, which the
    WebSocket endpoints use to move a connection out of the HTTP count and to drop a socket
    that will not close (``zajel.web.transport``).

    ``metrics``: what the app counts into and ``/metrics`` serves (by default the server's
    current one, else a new one). ``metrics_listener``: ``/metrics`` is served on its own
    address (``METRICS_BIND``, by ``zajel serve`` or ``zajel.asgi``), so not here.
    """
    if metrics is None:
        metrics = current_metrics() or Metrics(version=package_version())
    if config.metrics_bind is not None and not metrics_listener and config.metrics:
        log.warning(
            "METRICS_BIND has no listener in this embedding: /metrics stays on the main port",
            extra=context(setting="ZAJEL_METRICS_BIND"),
        )
    app = QuartTrio("zajel")
    # A doubled slash is a path of its own (404 JSON, or the route's own error), never
    # werkzeug's 308 redirect with an HTML body.
    app.url_map.merge_slashes = False
    # The largest body any route takes (docs/operations.md, "Fixed values"); each route has its own,
    # smaller limit.
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]  # entries keep their documented order
    caps = ConnectionCaps(config.ws_max_connections, config.ws_max_connections_per_ip)
    http_limiter = KeyedWindowLimiter(config.http_rate_per_minute, 60.0)
    endpoints = [
        Endpoint(
            "signal",
            "/signal",
            functools.partial(
                signaling_protocol.decode,
                limits=channels_protocol.Limits(
                    announce_max=config.chunk_announce_max,
                    chunk_max_bytes=config.channel_chunk_max_bytes,
                ),
            ),
            services.signaling,
            side=services.chunks,
            side_types=channels_protocol.ROUTED,
            metrics=metrics.endpoints["signal"],
        ),
        Endpoint(
            "relay",
            "/relay",
            functools.partial(
                relay_protocol.decode,
                limits=relay_protocol.Limits(
                    max_items=config.rendezvous_max_items,
                    announce_max=config.chunk_announce_max,
                    chunk_max_bytes=config.chunk_max_bytes,
                ),
            ),
            services.relay,
            side=services.chunks,
            side_types=chunks_protocol.CHUNK_MESSAGES,
            metrics=metrics.endpoints["relay"],
        ),
    ]
    app.asgi_app = SocketRouter(  # type: ignore[method-assign]  # ASGI middleware, as documented
        app.asgi_app,
        endpoints,
        config=config,
        caps=caps,
        shutdown=shutdown,
        connections=connections,
        cluster=services.cluster,
        metrics=metrics,
    )
    if services.cluster is not None:
        services.cluster.count_connections(lambda: caps.total)

    def remote_ip() -> str:
        """The requesting client's per-IP key (IPv6 by its /64)."""
        return ip_key(
            client_ip(
                request.remote_addr,
                request.headers.items(),
                config.trust_proxy,
                config.trusted_proxies,
            )
        )

    # -- cross-cutting HTTP behaviour ----------------------------------------------------

    @app.before_request
    async def limit_and_preflight() -> Response | None:
        g.started = time.perf_counter()
        rule = request.url_rule
        if rule is not None and rule.rule in UNMETERED_ROUTES:
            # docs/operations.md, "Health checks and metrics": a monitor is never refused.
            return None
        retry_after = http_limiter.check(remote_ip(), trio.current_time())
        if retry_after is not None:
            metrics.refused("http_rate_limit")
            response = jsonify(error="Too Many Requests")
            response.status_code = 429
            response.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
            return response
        if request.method == "OPTIONS":
            return Response("", status=200)
        return None

    @app.after_request
    async def add_headers(response: Response) -> Response:
        rule = request.url_rule
        route = rule.rule if rule is not None else "unmatched"
        started = g.get("started")
        if started is not None:
            metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
        metrics.http_responses.labels(route, str(response.status_code)).inc()
        response.headers.update(SECURITY_HEADERS)
        response.headers.update(CORS_HEADERS)
        origin = request.headers.get("Origin")
        if origin and origin_allowed(origin, config.allowed_origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        response = jsonify(error=error.name)
        response.status_code = error.code or 500
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
        return response

    @app.errorhandler(Unavailable)
    async def unavailable(error: Unavailable) -> Response:
        # docs/cluster.md, "What clients see".
        log.warning("cluster unavailable", extra=context(path=request.path, error=str(error)))
        response = jsonify(error="Cluster unavailable")
        response.status_code = 503
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log.exception("request failed", extra=context(path=request.path), exc_info=error)
        response = jsonify(error="Internal Server Error")
        response.status_code = 500
        return response

    # -- info, health, stats -------------------------------------------------------------

    @app.get("/")
    @app.get("/api/info")
    async def info() -> Response:
        return jsonify(
            name="Zajel Server",
            version=package_version(),
            endpoints=ENDPOINTS,
            features=FEATURES,
        )

    async def collect_stats() -> tuple[dict[str, dict[str, int]], list[str]]:
        """Every service's statistics, asked at once; services that do not answer within
        ``HEALTH_TIMEOUT_S`` are named in the second item."""
        replies: dict[str, Any] = {}

        async def ask(name: str, address: Address, request: Any) -> None:
            with trio.move_on_after(HEALTH_TIMEOUT_S), contextlib.suppress(Unavailable):
                replies[name] = await address.call(request)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "signaling", services.signaling, GetStats())
            nursery.start_soon(ask, "relay", services.relay, GetRelayStats())
            nursery.start_soon(ask, "chunks", services.chunks, GetChunkStats())
            nursery.start_soon(ask, "servers", services.servers, GetServerStats())
            nursery.start_soon(ask, "attestation", services.attestation, GetAttestationStats())
            # Both durable services share the store, and each knows whether its own last
            # commit failed (a full disk still serves reads): the store is ok if both say so.
            nursery.start_soon(ask, "store", services.servers, CheckStore())
            nursery.start_soon(ask, "store (attestation)", services.attestation, CheckStore())
        sections: dict[str, dict[str, int]] = {}
        failing: list[str] = []
        relay = replies.get("relay")
        if isinstance(relay, RelayStats):
            sections.update(relays=relay.relays, rendezvous=relay.rendezvous)
        else:
            failing.append("relay")
        chunks = replies.get("chunks")
        if isinstance(chunks, ChunkStats):
            sections.update(chunks=chunks.chunks, channels=chunks.channels)
        else:
            failing.append("chunks")
        signaling = replies.get("signaling")
        if isinstance(signaling, SignalingStats):
            sections["signaling"] = signaling.to_json()
        else:
            failing.append("signaling")
        for name in ("servers", "attestation"):
            section = replies.get(name)
            if isinstance(section, dict):
                sections[name] = section
            else:
                failing.append(name)
        if not all(isinstance(replies.get(n), StoreOk) for n in ("store", "store (attestation)")):
            failing.append("store")
        if services.cluster is not None and not services.cluster.available:
            failing.append("cluster")
        return sections, failing

    @app.get("/health")
    async def health() -> Response:
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        body: dict[str, Any] = {"status": "ok", "service": "zajel", "timestamp": stamp}
        _, failing = await collect_stats()
        if failing:
            body.update(status="degraded", failing=failing)
            response = jsonify(body)
            response.status_code = 503
            return response
        return jsonify(body)

    async def scrape() -> Scrape:
        sections, failing = await collect_stats()
        cluster = services.cluster.status() if services.cluster is not None else None
        return Scrape(sections, failing, cluster)

    metrics.scrape_from(scrape)

    @app.get("/stats")
    async def stats() -> Response:
        sections, failing = await collect_stats()
        if failing:
            response = jsonify(error=f"Service unavailable: {', '.join(failing)}")
            response.status_code = 503
            return response
        # ``?process=1`` adds this process's own figures (bench/soak.py samples them).
        extra = {"process": process_stats()} if request.args.get("process") == "1" else {}
        if services.cluster is None:
            return jsonify({**sections, "connections": caps.total, **extra})
        # docs/cluster.md, "Operators": the cluster's totals, and this node's view of it.
        cluster = services.cluster.status()
        total = sum(node["connections"] for node in cluster["per_node"].values())
        body = {**sections, "connections": max(total, caps.total), "cluster": cluster}
        return jsonify({**body, **extra})

    if config.metrics and (config.metrics_bind is None or not metrics_listener):

        @app.get("/metrics")
        async def metrics_text() -> Response:
            return Response(await metrics.exposition(), content_type=CONTENT_TYPE)

    add_server_routes(app, config, services.servers)
    add_attestation_routes(app, config, services.attestation, remote_ip)
    return app


def process_stats() -> dict[str, int | None]:
    """This process's living trio tasks, resident memory (bytes) and open file descriptors;
    ``None`` for a figure the platform does not show (``/proc`` is Linux's)."""
    rss: int | None = None
    fds: int | None = None
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024  # the line is in kB
                break
    with contextlib.suppress(OSError):
        fds = len(os.listdir("/proc/self/fd"))
    return {
        "tasks": trio.lowlevel.current_statistics().tasks_living,
        "rss_bytes": rss,
        "fds": fds,
    }
