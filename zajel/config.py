"""One frozen configuration, read once from ``ZAJEL_*`` variables and ``zajel serve`` flags.

Invalid configuration stops the server at start with one clear line per invalid setting, all
reported at once; an unknown ``ZAJEL_*`` variable is a warning naming it
(``docs/operations.md``, "Configuration").
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs

from zajel.crypto import InvalidKey, load_seed, parse_public_key, public_key_b64, signing_key

Environment = Literal["production", "qa", "development"]
ENVIRONMENTS: tuple[Environment, ...] = ("production", "qa", "development")
LOG_LEVELS = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
}

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ConfigError(ValueError):
    """One or more settings are invalid.

    ``errors`` holds one line per problem, each naming its setting and saying what it must be;
    the message is those lines joined with ``"; "``.
    """

    def __init__(self, errors: str | Sequence[str]) -> None:
        self.errors: tuple[str, ...] = (errors,) if isinstance(errors, str) else tuple(errors)
        super().__init__("; ".join(self.errors))


@attrs.frozen(kw_only=True)
class Config:
    """Every setting of the server, validated. Secrets are kept out of ``repr``."""

    env: Environment = "development"
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    log_level: str = "DEBUG"
    log_format: Literal["text", "json"] = "text"
    metrics: bool = True
    # /metrics on an address of its own (host, port), not the main port (METRICS_BIND below).
    metrics_bind: tuple[str, int] | None = None

    # Signing keys hold the 64-hex-character Ed25519 seed once read (from the setting or its
    # @file).
    bootstrap_signing_key: str | None = attrs.field(default=None, repr=False)
    attestation_signing_key: str | None = attrs.field(default=None, repr=False)
    build_token_verify_key: str | None = attrs.field(default=None, repr=False)
    server_registry_secret: str | None = attrs.field(default=None, repr=False)
    ci_upload_secret: str | None = attrs.field(default=None, repr=False)
    allowed_origins: tuple[str, ...] = ()
    trust_proxy: str | None = None
    # Proxies whose ``trust_proxy`` header is believed (docs/operations.md, "Settings in use").
    trusted_proxies: tuple[Network, ...] = ()

    ws_max_message_bytes: int = 262_144
    chunk_max_bytes: int = 65_536
    # docs/protocol/channels.md: the apps' full 64 KiB chunks, base64 in JSON, on /signal.
    channel_chunk_max_bytes: int = 131_072
    channel_owner_grace_s: float = 3600.0
    ws_message_rate: float = 100.0
    ws_message_burst: int = 200
    pair_requests_per_minute: int = 10
    pair_pending_per_target: int = 10
    rendezvous_max_items: int = 50
    chunk_announce_max: int = 100
    ws_max_connections: int = 10_000
    ws_max_connections_per_ip: int = 100
    http_rate_per_minute: int = 100
    ws_outbound_queue: int = 256
    ws_ping_interval: float = 30.0
    ws_idle_timeout: float = 120.0
    # Our transport only (docs/operations.md, "Keep-alive"): a connection whose application
    # sent no message for this long is closed with 1001, even if its socket answers pings.
    ws_message_idle_timeout: float = 900.0
    # docs/operations.md: "fast" serves /signal and /relay on our own WebSocket transport
    # (zajel.web.fastws), "hypercorn" on hypercorn's; zajel serve only.
    ws_transport: Literal["fast", "hypercorn"] = "fast"

    # What one client (one IP, IPv6 by its /64) may hold:
    # docs/operations.md, "Limits and back-pressure".
    ws_outbound_bytes: int = 4 << 20
    ws_slow_consumer_ms: int = 2000
    http_max_connections_per_ip: int = 50
    pair_requests_per_minute_per_ip: int = 30
    chunk_cache_bytes: int = 64 << 20
    chunk_sources_per_ip: int = 20_000
    chunk_pending_per_ip: int = 2_000
    rendezvous_drops_per_point: int = 20
    rendezvous_reply_bytes: int = 128 << 10
    rendezvous_entries_per_ip: int = 2_000
    attest_registrations_per_ip_per_hour: int = 30
    attest_web_devices_max: int = 10_000

    # Cluster mode (docs/cluster.md, "Settings"): unset cluster_url is a single node.
    cluster_url: str | None = attrs.field(default=None, repr=False)
    node_id: str | None = None
    reuse_port: bool = False
    cluster_lease_ms: int = 10_000
    cluster_call_timeout_ms: int = 5_000
    cluster_linger_ms: int = 5

    # What the environment held that does not stop the server, one line each: an unknown
    # ``ZAJEL_*`` variable (``zajel serve`` logs them at start). Not part of equality.
    warnings: tuple[str, ...] = attrs.field(default=(), eq=False, repr=False)

    @property
    def redacts_codes(self) -> bool:
        """Pairing codes are redacted in logs outside development (docs/operations.md,
        "Redaction")."""
        return self.env != "development"

    def signing_public_keys(self) -> dict[str, str]:
        """The public key (standard base64) of each signing key set, by setting name: what
        apps and VPS servers verify with. Never the seeds."""
        seeds = {
            "ZAJEL_BOOTSTRAP_SIGNING_KEY": self.bootstrap_signing_key,
            "ZAJEL_ATTESTATION_SIGNING_KEY": self.attestation_signing_key,
        }
        return {
            setting: public_key_b64(signing_key(bytes.fromhex(seed)))
            for setting, seed in seeds.items()
            if seed is not None
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Config:
        """Build the configuration from ``ZAJEL_*`` variables; ``overrides`` (flags) win.

        Overrides whose value is ``None`` are ignored, so unset flags fall back to the
        environment.

        Every setting is read and checked before anything is refused, so one error reports
        every invalid setting. ``warnings`` of the result names each unknown ``ZAJEL_*``
        variable.

        Raises:
            ConfigError: listing every invalid setting, one entry each.
        """
        flags = {name: value for name, value in overrides.items() if value is not None}
        reader = _Reader(environ, flags)
        default_env = (
            "development"
            if reader.optional("ENV")
            else reader.collect("development", _default_env, environ)
        )
        env = reader.choice("ENV", default_env, ENVIRONMENTS)
        level = reader.choice("LOG_LEVEL", "info" if env != "development" else "debug", LOG_LEVELS)
        bootstrap_key = reader.signing_seed(
            "BOOTSTRAP_SIGNING_KEY", required=env != "development", env=env
        )
        attestation_key = reader.signing_seed(
            "ATTESTATION_SIGNING_KEY", required=env != "development", env=env
        )
        build_token_key = reader.public_key("BUILD_TOKEN_VERIFY_KEY")
        if attestation_key is not None and build_token_key is not None:
            own = public_key_b64(signing_key(bytes.fromhex(attestation_key)))
            if own == build_token_key:
                # docs/protocol/attestation.md, "Keys and secrets": session tokens and build tokens
                # are signed by different keys, so the server's key can never make a build token.
                reader.error(
                    "ZAJEL_ATTESTATION_SIGNING_KEY: must differ from the build-token key "
                    "(ZAJEL_BUILD_TOKEN_VERIFY_KEY is its public key)"
                )
        trust_proxy = reader.optional_choice("TRUST_PROXY", ("CF-Connecting-IP", "X-Forwarded-For"))
        trusted_proxies = reader.networks("TRUSTED_PROXIES")
        if trust_proxy is not None and not trusted_proxies:
            # A header believed from anyone lets every client pick its own IP, and with it
            # every per-IP cap (docs/operations.md, "Behind a TLS-terminating proxy").
            reader.error(
                "ZAJEL_TRUSTED_PROXIES: required with ZAJEL_TRUST_PROXY; list the addresses "
                "or CIDRs of the proxies whose header is believed"
            )
        config = cls(
            env=env,
            host=reader.text("HOST", "127.0.0.1"),
            port=reader.integer("PORT", 8080, 0, 65_535),
            data_dir=Path(reader.text("DATA_DIR", "data")),
            log_level=LOG_LEVELS[level],
            log_format=reader.choice("LOG_FORMAT", "text", ("text", "json")),
            metrics=reader.choice("METRICS", "on", ("on", "off")) == "on",
            metrics_bind=reader.collect(
                None,
                parse_metrics_bind,
                reader.optional("METRICS_BIND"),
                reader.choice("METRICS", "on", ("on", "off")),
            ),
            bootstrap_signing_key=bootstrap_key,
            attestation_signing_key=attestation_key,
            build_token_verify_key=build_token_key,
            server_registry_secret=reader.optional("SERVER_REGISTRY_SECRET"),
            ci_upload_secret=reader.optional("CI_UPLOAD_SECRET"),
            allowed_origins=tuple(
                origin.strip()
                for origin in reader.text("ALLOWED_ORIGINS", "").split(",")
                if origin.strip()
            ),
            trust_proxy=trust_proxy,
            trusted_proxies=trusted_proxies,
            ws_max_message_bytes=reader.integer("WS_MAX_MESSAGE_BYTES", 262_144, 1024, 16 << 20),
            chunk_max_bytes=reader.integer("CHUNK_MAX_BYTES", 65_536, 1024, 16 << 20),
            channel_chunk_max_bytes=reader.integer(
                "CHANNEL_CHUNK_MAX_BYTES", 131_072, 1024, 16 << 20
            ),
            channel_owner_grace_s=reader.number("CHANNEL_OWNER_GRACE_S", 3600.0, 0.0, 7 * 86_400.0),
            ws_message_rate=reader.number("WS_MESSAGE_RATE", 100.0, 0.1, 1e9),
            ws_message_burst=reader.integer("WS_MESSAGE_BURST", 200, 1, 10**9),
            pair_requests_per_minute=reader.integer("PAIR_REQUESTS_PER_MINUTE", 10, 1, 10**6),
            pair_pending_per_target=reader.integer("PAIR_PENDING_PER_TARGET", 10, 1, 10**6),
            rendezvous_max_items=reader.integer("RENDEZVOUS_MAX_ITEMS", 50, 1, 10_000),
            chunk_announce_max=reader.integer("CHUNK_ANNOUNCE_MAX", 100, 1, 10_000),
            ws_max_connections=reader.integer("WS_MAX_CONNECTIONS", 10_000, 1, 10**7),
            ws_max_connections_per_ip=reader.integer("WS_MAX_CONNECTIONS_PER_IP", 100, 1, 10**7),
            http_rate_per_minute=reader.integer("HTTP_RATE_PER_MINUTE", 100, 1, 10**9),
            ws_outbound_queue=reader.integer("WS_OUTBOUND_QUEUE", 256, 1, 1_000_000),
            ws_ping_interval=reader.number("WS_PING_INTERVAL", 30.0, 0.01, 86_400.0),
            ws_idle_timeout=reader.number("WS_IDLE_TIMEOUT", 120.0, 0.01, 86_400.0),
            ws_message_idle_timeout=reader.number("WS_MESSAGE_IDLE_TIMEOUT", 900.0, 0.01, 86_400.0),
            ws_transport=reader.choice("WS_TRANSPORT", "fast", ("fast", "hypercorn")),
            ws_outbound_bytes=reader.integer("WS_OUTBOUND_BYTES", 4 << 20, 65_536, 1 << 30),
            ws_slow_consumer_ms=reader.integer("WS_SLOW_CONSUMER_MS", 2000, 10, 3_600_000),
            http_max_connections_per_ip=reader.integer("HTTP_MAX_CONNECTIONS_PER_IP", 50, 1, 10**6),
            pair_requests_per_minute_per_ip=reader.integer(
                "PAIR_REQUESTS_PER_MINUTE_PER_IP", 30, 1, 10**6
            ),
            chunk_cache_bytes=reader.integer("CHUNK_CACHE_BYTES", 64 << 20, 65_536, 1 << 40),
            chunk_sources_per_ip=reader.integer("CHUNK_SOURCES_PER_IP", 20_000, 1, 10**8),
            chunk_pending_per_ip=reader.integer("CHUNK_PENDING_PER_IP", 2_000, 1, 10**8),
            rendezvous_drops_per_point=reader.integer("RENDEZVOUS_DROPS_PER_POINT", 20, 1, 10_000),
            rendezvous_reply_bytes=reader.integer(
                "RENDEZVOUS_REPLY_BYTES", 128 << 10, 4_096, 16 << 20
            ),
            rendezvous_entries_per_ip=reader.integer("RENDEZVOUS_ENTRIES_PER_IP", 2_000, 1, 10**8),
            attest_registrations_per_ip_per_hour=reader.integer(
                "ATTEST_REGISTRATIONS_PER_IP_PER_HOUR", 30, 1, 10**6
            ),
            attest_web_devices_max=reader.integer("ATTEST_WEB_DEVICES_MAX", 10_000, 1, 10**7),
            cluster_url=reader.cluster_url("CLUSTER_URL"),
            node_id=reader.node_id("NODE_ID"),
            reuse_port=reader.choice("REUSE_PORT", "off", ("on", "off")) == "on",
            cluster_lease_ms=reader.integer("CLUSTER_LEASE_MS", 10_000, 1_000, 600_000),
            cluster_call_timeout_ms=reader.integer("CLUSTER_CALL_TIMEOUT_MS", 5_000, 100, 600_000),
            cluster_linger_ms=reader.integer("CLUSTER_LINGER_MS", 5, 0, 100),
            # Last: once every setting above has been asked for by name.
            warnings=tuple(_unknown_variables(environ, reader.asked)),
        )
        if reader.errors:
            raise ConfigError(reader.errors)
        return config


def _unknown_variables(environ: Mapping[str, str], known: set[str]) -> list[str]:
    """One warning per ``ZAJEL_*`` variable that is no setting, with the closest setting's
    name when one is close (a typo). Only names are written, never values (they may be
    secrets)."""
    warnings = []
    for variable in sorted(environ):
        if not variable.startswith("ZAJEL_") or variable[len("ZAJEL_") :] in known:
            continue
        line = f"unknown setting {variable} is ignored"
        close = difflib.get_close_matches(
            variable, [f"ZAJEL_{name}" for name in sorted(known)], n=1, cutoff=0.8
        )
        if close:
            line += f"; did you mean {close[0]}?"
        warnings.append(line)
    return warnings


def _default_env(environ: Mapping[str, str]) -> str:
    # docs/operations.md, "Settings in use": ENV is also read from ENVIRONMENT / NODE_ENV when
    # unset.
    for name in ("ENVIRONMENT", "NODE_ENV"):
        value = environ.get(name, "").strip().lower()
        if value:
            if value not in ENVIRONMENTS:
                raise ConfigError(
                    f"ZAJEL_ENV is unset and {name}={value!r} is not one of "
                    f"{', '.join(ENVIRONMENTS)}; set ZAJEL_ENV"
                )
            return value
    return "development"


@attrs.frozen
class _Reader:
    """Reads settings by name; an invalid one is recorded in ``errors`` and read as its
    default, so every setting is checked before the configuration is refused."""

    environ: Mapping[str, str]
    flags: Mapping[str, Any]
    errors: list[str] = attrs.field(factory=list)
    # Every setting name read (without ``ZAJEL_``): the others in the environment are unknown.
    asked: set[str] = attrs.field(factory=set)

    def error(self, message: str) -> None:
        self.errors.append(message)

    def collect(self, default: T, read: Callable[..., T], *args: Any) -> T:
        """``read(*args)``, or ``default`` once its ``ConfigError`` is recorded."""
        try:
            return read(*args)
        except ConfigError as exc:
            self.errors.extend(exc.errors)
            return default

    def _raw(self, name: str) -> Any:
        self.asked.add(name)
        flag = name.lower()
        if flag in self.flags:
            return self.flags[flag]
        return self.environ.get(f"ZAJEL_{name}")

    def optional(self, name: str) -> str | None:
        value = self._raw(name)
        if value is None or str(value).strip() == "":
            return None
        return str(value).strip()

    def signing_seed(self, name: str, *, required: bool, env: str) -> str | None:
        """An Ed25519 seed given as 64 hex characters or ``@path``, as 64 lowercase hex
        characters (docs/operations.md, "Configuration" and "Environments")."""
        value = self.optional(name)
        if value is None:
            if required:
                self.error(f"ZAJEL_{name}: required in {env}; make one with `zajel keygen`")
            return None
        try:
            return load_seed(value).hex()
        except InvalidKey as exc:
            self.error(f"ZAJEL_{name}: {exc}")
            return None

    def public_key(self, name: str) -> str | None:
        """An Ed25519 public key in standard base64 (what ``zajel keygen`` prints)."""
        value = self.optional(name)
        if value is None:
            return None
        try:
            return public_key_b64(parse_public_key(value))
        except InvalidKey as exc:
            self.error(f"ZAJEL_{name}: {exc}")
            return None

    def cluster_url(self, name: str) -> str | None:
        """A ``redis://`` or ``rediss://`` URL; the message never repeats it (it may hold a
        password)."""
        value = self.optional(name)
        if value is None:
            return None
        from zajel.cluster.link import RedisAddress

        try:
            RedisAddress.parse(value)
        except ValueError as exc:
            self.error(f"ZAJEL_{name}: {exc}")
            return None
        return value

    def node_id(self, name: str) -> str | None:
        value = self.optional(name)
        if value is not None and not _NODE_ID.fullmatch(value):
            self.error(f"ZAJEL_{name}: must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'")
            return None
        return value

    def text(self, name: str, default: str) -> str:
        value = self.optional(name)
        return default if value is None else value

    def choice(self, name: str, default: str, allowed: Any) -> Any:
        value = self.text(name, default).lower()
        if value not in allowed:
            self.error(f"ZAJEL_{name}: must be one of {', '.join(allowed)}; got {value!r}")
            return default
        return value

    def optional_choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        value = self.optional(name)
        if value is None:
            return None
        for option in allowed:
            if value.lower() == option.lower():
                return option
        self.error(f"ZAJEL_{name}: must be one of {', '.join(allowed)}; got {value!r}")
        return None

    def networks(self, name: str) -> tuple[Network, ...]:
        """Comma-separated addresses or CIDRs, e.g. ``10.0.0.0/8, ::1``."""
        value = self.optional(name)
        if value is None:
            return ()
        networks = []
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.error(f"ZAJEL_{name}: {item!r} is not an IP address or CIDR")
        return tuple(networks)

    def _parsed(self, name: str, default: T, parse: Callable[[str], T], kind: str) -> T:
        value = self._raw(name)
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return default
        try:
            return parse(str(value).strip())
        except ValueError:
            self.error(f"ZAJEL_{name}: must be {kind}; got {value!r}")
            return default

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._parsed(name, default, int, "an integer")
        if not low <= value <= high:
            self.error(f"ZAJEL_{name}: must be between {low} and {high}; got {value}")
            return default
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self._parsed(name, default, float, "a number")
        if not low <= value <= high:  # also refuses NaN
            self.error(f"ZAJEL_{name}: must be between {low} and {high}; got {value}")
            return default
        return value


# -- METRICS_BIND (docs/operations.md, "Metrics") ------------------------------------------------


def parse_metrics_bind(value: str | None, metrics: str = "on") -> tuple[str, int] | None:
    """``ZAJEL_METRICS_BIND``: ``HOST:PORT`` (``[HOST]:PORT`` for IPv6) where ``/metrics`` is
    served instead of the main port; HOST is one IP address or ``localhost``, never a
    wildcard: the point is to keep the endpoint on an address of the operator's choice.

    Raises:
        ConfigError: the value is no such address, or ``ZAJEL_METRICS`` is ``off``.
    """
    if value is None:
        return None
    example = "e.g. 127.0.0.1:9464 or [::1]:9464"
    host, colon, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without brackets: the port cannot be told apart
    if not colon or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65_535:
        raise ConfigError(f"ZAJEL_METRICS_BIND: must be HOST:PORT, {example}; got {value!r}")
    if host.lower() == "localhost":
        host = "127.0.0.1"
    else:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"ZAJEL_METRICS_BIND: HOST must be an IP address or localhost, {example}; "
                f"got {value!r}"
            ) from None
        if address.is_unspecified:
            raise ConfigError(
                f"ZAJEL_METRICS_BIND: {host} listens on every interface; name one address, "
                f"{example}"
            )
    if metrics == "off":
        raise ConfigError("ZAJEL_METRICS_BIND: set while ZAJEL_METRICS=off; unset one of them")
    return host, int(port_text)
