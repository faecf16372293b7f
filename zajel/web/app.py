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
from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from zajel.config import Config
from zajel.logs import context
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
) -> QuartTrio:
    """The Quart-trio app for ``services``; setting ``shutdown`` closes every WebSocket (1001).

    ``connections``: the TCP connections of ``zajel serve``'s own accept loop, which the
    WebSocket endpoints use to move a connection out of the HTTP count and to drop a socket
    that will not close (``zajel.web.transport``).
    """
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
        retry_after = http_limiter.check(remote_ip(), trio.current_time())
        if retry_after is not None:
            response = jsonify(error="Too Many Requests")
            response.status_code = 429
            response.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
            return response
        if request.method == "OPTIONS":
            return Response("", status=200)
        return None

    @app.after_request
    async def add_headers(response: Response) -> Response:
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

    if config.metrics:

        @app.get("/metrics")
        async def metrics() -> Response:
            sections, failing = await collect_stats()
            lines = [
                "# HELP zajel_websocket_connections Open WebSocket connections.",
                "# TYPE zajel_websocket_connections gauge",
                f"zajel_websocket_connections {caps.total}",
            ]
            for section, values in sections.items():
                for name, value in values.items():
                    metric = f"zajel_{section}_{_snake(name)}"
                    lines += [f"# TYPE {metric} gauge", f"{metric} {value}"]
            if services.cluster is not None:
                lines += _cluster_metrics(services.cluster.status())
            lines += [
                "# TYPE zajel_up gauge",
                f"zajel_up {int(not failing)}",
                "# TYPE zajel_time_seconds gauge",
                f"zajel_time_seconds {time.time():.3f}",
            ]
            return Response("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")

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


def _cluster_metrics(status: dict[str, Any]) -> list[str]:
    """This node's part of the cluster and its cross-node hop (docs/cluster.md, "Operators")."""
    hop = status["hop"]
    lines = [
        "# HELP zajel_cluster_nodes Live nodes of the cluster, as this node last read them.",
        "# TYPE zajel_cluster_nodes gauge",
        f"zajel_cluster_nodes {status['nodes']}",
        "# HELP zajel_cluster_degraded 1 while this node cannot reach Redis.",
        "# TYPE zajel_cluster_degraded gauge",
        f"zajel_cluster_degraded {int(status['degraded'])}",
        "# HELP zajel_cluster_owned Services this node runs (1) or not (0).",
        "# TYPE zajel_cluster_owned gauge",
    ]
    lines += [
        f'zajel_cluster_owned{{service="{name}"}} {int(owner == status["node"])}'
        for name, owner in status["owners"].items()
    ]
    counters = {
        "messages_out": "Messages this node sent other nodes.",
        "messages_in": "Messages this node received from other nodes.",
        "batches_out": "PUBLISH batches this node sent.",
        "batches_in": "Batches this node received.",
        "bytes_out": "Bytes this node published to other nodes.",
        "bytes_in": "Bytes this node received from other nodes.",
        "calls": "Calls this node made to services on other nodes.",
        "call_timeouts": "Calls to other nodes that missed their deadline.",
    }
    for name, help_text in counters.items():
        metric = f"zajel_cluster_hop_{name}_total"
        lines += [
            f"# HELP {metric} {help_text}",
            f"# TYPE {metric} counter",
            f"{metric} {hop[name]}",
        ]
    for quantile, value in hop["latency_ms"].items():
        if value is not None:
            metric = f"zajel_cluster_hop_latency_{quantile}_seconds"
            lines += [
                f"# HELP {metric} The hop's latency, {quantile} of the last samples.",
                f"# TYPE {metric} gauge",
                f"{metric} {value / 1000:.6f}",
            ]
    return lines


def _snake(name: str) -> str:
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name)
