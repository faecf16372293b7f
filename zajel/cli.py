"""``zajel``: the command line (``zajel serve``, ``zajel keygen``, ``zajel servers``, the
release pipeline's ``zajel attest make-reference`` and ``zajel attest sign-build-token``, and the
device's step ``zajel attest answer``)."""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import math
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TypeVar

import trio

from zajel import clock, logs
from zajel.attestation import answer_challenge, check_release, make_reference, sign_build_token
from zajel.bootstrap import SIGNATURE_HEADER, BootstrapError, verify_server_list
from zajel.cluster import ClusterStartError
from zajel.config import ENVIRONMENTS, LOG_LEVELS, Config, ConfigError
from zajel.crypto import (
    InvalidKey,
    generate_seed,
    load_seed,
    parse_public_key,
    public_key_b64,
    signing_key,
)
from zajel.storage import StoreError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zajel", description="Zajel coordination server")
    parser.add_argument("--version", action="version", version=f"zajel {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server (one process per node)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port; 0 picks a free one (default 8080)")
    serve.add_argument("--env", choices=ENVIRONMENTS, help="environment (default development)")
    serve.add_argument("--data-dir", help="where the embedded store lives (default ./data)")
    serve.add_argument("--log-format", choices=("text", "json"), help="log line format")
    serve.add_argument(
        "--log-level",
        choices=tuple(LOG_LEVELS),
        type=str.lower,
        help="lowest level logged (default info in production and qa, debug in development)",
    )
    serve.add_argument(
        "--cluster", metavar="URL", help="join the cluster on this Redis (docs/cluster.md)"
    )
    serve.add_argument("--node-id", help="this node's id in the cluster (default random)")
    serve.add_argument(
        "--reuse-port",
        action="store_const",
        const="on",
        help="bind with SO_REUSEPORT, so several nodes on one machine share the port",
    )
    cluster = commands.add_parser("cluster", help="inspect a cluster (docs/cluster.md)")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    status = cluster_commands.add_parser(
        "status", help="the nodes, their heartbeats and the owner of each service"
    )
    status.add_argument(
        "--cluster", metavar="URL", help="the cluster's Redis (default ZAJEL_CLUSTER_URL)"
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    keygen = commands.add_parser("keygen", help="print a new Ed25519 signing key")
    keygen_mode = keygen.add_mutually_exclusive_group()
    keygen_mode.add_argument(
        "--seed-file", help="write the seed to this new file (mode 0600) instead of printing it"
    )
    keygen_mode.add_argument(
        "--public-key-of",
        metavar="SEED|@FILE",
        help="print the public key of an existing seed: 64 hex, or @FILE holding them "
        "(prefer @FILE: a command line is visible to other users)",
    )
    servers = commands.add_parser("servers", help="fetch, verify and show the signed server list")
    servers.add_argument("--url", required=True, help="the server's URL, e.g. https://host")
    servers.add_argument(
        "--public-key", required=True, help="the server's public key (base64, from zajel keygen)"
    )
    servers.add_argument("--json", action="store_true", help="print the verified list as JSON")
    servers.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)"
    )
    _add_attest(commands)
    return parser


def _add_attest(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # docs/protocol/attestation.md: the release pipeline's half of device attestation, and the
    # device's answer to a challenge.
    attest = commands.add_parser("attest", help="helpers for device attestation")
    steps = attest.add_subparsers(dest="attest_command", required=True)
    reference = steps.add_parser(
        "make-reference",
        help="print the POST /attest/upload-reference body for a release binary",
    )
    reference.add_argument("binary", metavar="BINARY", help="the release binary devices run")
    reference.add_argument("--version", required=True, help="release version, X.Y.Z")
    reference.add_argument("--platform", required=True, help="platform, e.g. android")
    reference.add_argument(
        "--regions",
        type=int,
        default=16,
        help="regions to take, 3-256 (default 16; fewer, down to 1, if the binary is small)",
    )
    reference.add_argument(
        "--region-bytes", type=int, default=256, help="bytes per region, 1-4096 (default 256)"
    )
    reference.add_argument(
        "--build-hash", help="build hash to record (default: SHA-256 of BINARY in hex)"
    )
    token = steps.add_parser(
        "sign-build-token", help="print a signed build_token for POST /attest/register"
    )
    token.add_argument(
        "--seed",
        required=True,
        help="build-token signing seed: 64 hex, or @FILE holding them (prefer @FILE)",
    )
    token.add_argument("--version", required=True, help="release version, X.Y.Z")
    token.add_argument("--platform", required=True, help="platform, e.g. android")
    token.add_argument("--build-hash", required=True, help="the build hash of the release")
    token.add_argument(
        "--timestamp", type=int, help="signing time, epoch milliseconds (default now)"
    )
    answer = steps.add_parser(
        "answer", help="print the POST /attest/verify body answering a challenge with a binary"
    )
    answer.add_argument("binary", metavar="BINARY", help="the binary the device runs")
    answer.add_argument("--device-id", required=True, help="the device the challenge was issued to")
    answer.add_argument(
        "--challenge",
        default="-",
        help="the POST /attest/challenge reply (JSON): a file, or - for stdin (the default)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "keygen":
        return _keygen(args)
    if args.command == "cluster":
        return _cluster_status(args)
    if args.command == "servers":
        return _servers(args)
    if args.command == "attest":
        if args.attest_command == "make-reference":
            return _make_reference(args)
        if args.attest_command == "answer":
            return _answer(args)
        return _sign_build_token(args)
    return 2  # pragma: no cover - argparse requires a command


def _version() -> str:
    try:
        return importlib.metadata.version("zajel")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def serve_config(args: argparse.Namespace) -> Config:
    """The configuration of ``zajel serve``: the ``ZAJEL_*`` variables, and its flags over them.

    Raises:
        ConfigError: listing every invalid setting.
    """
    return Config.from_env(
        os.environ,
        host=args.host,
        port=args.port,
        env=args.env,
        data_dir=args.data_dir,
        log_format=args.log_format,
        log_level=args.log_level,
        cluster_url=args.cluster,
        node_id=args.node_id,
        reuse_port=args.reuse_port,
    )


def _serve(args: argparse.Namespace) -> int:
    try:
        config = serve_config(args)
    except ConfigError as exc:
        for error in exc.errors:  # every invalid setting, one line each
            print(f"zajel: configuration error: {error}", file=sys.stderr)
        return 2
    try:
        if config.cluster_url is None:  # a cluster node keeps nothing on disk
            config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"zajel: configuration error: ZAJEL_DATA_DIR: cannot create {config.data_dir}: "
            f"{exc.strerror}",
            file=sys.stderr,
        )
        return 2
    logs.configure(config.log_level, config.log_format)
    logs.log_start(config)

    async def run() -> None:
        from zajel.server import tune_gc

        async with trio.open_nursery() as nursery:
            url = await nursery.start(_serve_and_report, config)
            tune_gc()
            print(f"zajel listening on {url}", flush=True)

    try:
        trio.run(run)
    except (OSError, StoreError, ClusterStartError, BaseExceptionGroup) as exc:
        # The start-up steps that fail on the machine, not in the settings: the cluster, the
        # store, then binding the address.
        cluster_failure = _only(exc, ClusterStartError)
        if cluster_failure is not None:
            return _fail(f"{cluster_failure} (ZAJEL_CLUSTER_URL)", 2)
        store_failure = _only(exc, StoreError)
        if store_failure is not None:
            return _fail(f"cannot open the store (ZAJEL_DATA_DIR): {store_failure}", 2)
        from zajel.server import MetricsBindError, host_port

        bind_failure = _only(exc, MetricsBindError)
        if bind_failure is not None and config.metrics_bind is not None:
            return _fail(
                f"cannot listen on {host_port(*config.metrics_bind)} "
                f"(ZAJEL_METRICS_BIND): {bind_failure.strerror or bind_failure}",
                2,
            )
        failure = _only(exc, OSError)
        if failure is None:
            raise
        return _fail(
            f"cannot listen on {config.host}:{config.port} (ZAJEL_HOST/ZAJEL_PORT): "
            f"{failure.strerror or failure}",
            2,
        )
    return 0


E = TypeVar("E", bound=BaseException)


def _only(exc: BaseException, kind: type[E]) -> E | None:
    """The ``kind`` error behind ``exc`` when that is all it holds (trio wraps errors in
    groups)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        errors = [_only(inner, kind) for inner in exc.exceptions]
        if errors and all(error is not None for error in errors):
            return errors[0]
    return None


async def _serve_and_report(config: Config, *, task_status: trio.TaskStatus[str]) -> None:
    from zajel.server import serve

    await serve(config, exit_when_stuck=True, task_status=task_status)


def _cluster_status(args: argparse.Namespace) -> int:
    """Exit 0 when every service has an owner, 1 when one has none, 2 when Redis cannot be
    read."""
    from zajel.cluster.link import RedisAddress
    from zajel.cluster.status import read_status

    url = args.cluster or os.environ.get("ZAJEL_CLUSTER_URL")
    if not url:
        return _fail("cluster status: give --cluster URL or set ZAJEL_CLUSTER_URL", 2)
    try:
        redacted = RedisAddress.parse(url).redacted()
    except ValueError as exc:
        return _fail(f"cluster status: --cluster: {exc}", 2)
    try:
        status = trio.run(read_status, url)
    except Exception as exc:  # any failure to reach or read Redis
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
        return _fail(f"cluster status: cannot read {redacted}: {reason}", 2)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print("\n".join(status.lines()))
    return 0 if status.complete else 1


def _fail(message: str, status: int) -> int:
    """Print ``zajel: <message>`` as exactly one line on stderr and return ``status``."""
    print("zajel: " + " ".join(message.split()), file=sys.stderr)
    return status


def _keygen(args: argparse.Namespace) -> int:
    # docs/operations.md, "Other commands": `seed=<64 hex>` and `public_key=<base64>`, two lines.
    if args.public_key_of is not None:
        try:
            # InvalidKey never carries the seed, only what is wrong with it (or the file's path).
            seed = load_seed(args.public_key_of)
        except InvalidKey as exc:
            return _fail(f"--public-key-of: {exc}", 2)
        print(f"public_key={public_key_b64(signing_key(seed))}")
        return 0
    seed = generate_seed()
    public_key = public_key_b64(signing_key(seed))
    if args.seed_file is None:
        print(f"seed={seed.hex()}")
        print(f"public_key={public_key}")
        return 0
    path = args.seed_file
    try:
        # O_EXCL: never overwrite a key that may already be in use.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _fail(f"{path} already exists; not overwriting it", 2)
    except OSError as exc:
        return _fail(f"cannot create {path}: {exc.strerror or exc}", 2)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(seed.hex() + "\n")
    print(f"public_key={public_key}")
    print(f"seed written to {path} (give the key setting as @{path})")
    return 0


def _read_binary(path: str) -> bytes | None:
    """The bytes of ``path``, or ``None`` once one line on stderr has said why not."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror or exc}", 2)
        return None


def _make_reference(args: argparse.Namespace) -> int:
    data = _read_binary(args.binary)
    if data is None:
        return 2
    try:
        body = make_reference(
            data,
            version=args.version,
            platform=args.platform,
            build_hash=args.build_hash,
            regions=args.regions,
            region_bytes=args.region_bytes,
        )
    except ValueError as exc:
        return _fail(str(exc), 2)
    print(json.dumps(body, separators=(",", ":")))
    return 0


def _sign_build_token(args: argparse.Namespace) -> int:
    try:
        # InvalidKey never carries the seed, only what is wrong with it (or the file's path).
        seed = load_seed(args.seed)
    except InvalidKey as exc:
        return _fail(f"--seed: {exc}", 2)
    try:
        check_release(args.version, args.platform, args.build_hash)
    except ValueError as exc:
        return _fail(str(exc), 2)
    timestamp = clock.epoch_ms() if args.timestamp is None else args.timestamp
    if timestamp < 0:
        return _fail("--timestamp must be epoch milliseconds, not negative", 2)
    token = sign_build_token(
        seed,
        version=args.version,
        platform=args.platform,
        build_hash=args.build_hash,
        timestamp_ms=timestamp,
    )
    print(json.dumps(token, separators=(",", ":")))
    return 0


# A challenge reply is a few hundred bytes; more is not one.
_MAX_CHALLENGE_BYTES = 64 << 10


def _answer(args: argparse.Namespace) -> int:
    source = args.challenge
    try:
        if source == "-":
            text = sys.stdin.buffer.read(_MAX_CHALLENGE_BYTES + 1)
            source = "stdin"
        else:
            with open(source, "rb") as file:
                text = file.read(_MAX_CHALLENGE_BYTES + 1)
    except OSError as exc:
        return _fail(f"cannot read {source}: {exc.strerror or exc}", 2)
    if len(text) > _MAX_CHALLENGE_BYTES:
        return _fail(f"the challenge in {source} is over {_MAX_CHALLENGE_BYTES} bytes", 2)
    try:
        challenge = json.loads(text)
    except ValueError:  # UnicodeDecodeError included
        return _fail(f"the challenge in {source} is not JSON", 2)
    data = _read_binary(args.binary)
    if data is None:
        return 2
    try:
        body = answer_challenge(data, challenge, device_id=args.device_id)
    except ValueError as exc:
        return _fail(str(exc), 2)
    print(json.dumps(body, separators=(",", ":")))
    return 0


# Far above 1000 entries of at most 4 KiB each (docs/protocol/servers.md, "Limits"), far below a
# memory problem.
_MAX_LIST_BYTES = 16 << 20
_TABLE_FIELDS = (
    "serverId",
    "endpoint",
    "region",
    "connections",
    "relayConnections",
    "signalingConnections",
    "activeCodes",
)


def _servers(args: argparse.Namespace) -> int:
    url = _servers_url(args.url)
    if url is None:
        return _fail("--url must be an http or https URL with a host", 2)
    try:
        key = parse_public_key(args.public_key)
    except InvalidKey as exc:
        return _fail(f"--public-key: {exc}", 2)
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        return _fail("--timeout must be a positive number of seconds", 2)

    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "zajel-cli"}
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            status = response.status
            signature = response.headers.get(SIGNATURE_HEADER)
            body = response.read(_MAX_LIST_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        return _fail(f"{url} answered HTTP {exc.code}", 1)
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = _describe(reason) if isinstance(reason, BaseException) else str(reason)
        return _fail(f"cannot fetch {url}: {text}", 1)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return _fail(f"cannot fetch {url}: {_describe(exc)}", 1)
    if status != 200:
        return _fail(f"{url} answered HTTP {status}", 1)
    if len(body) > _MAX_LIST_BYTES:
        return _fail(f"{url} answered more than {_MAX_LIST_BYTES} bytes", 1)

    now_ms = clock.epoch_ms()
    try:
        entries = verify_server_list(body, signature, key, now_ms=now_ms)
    except BootstrapError as exc:
        return _fail(str(exc), 1)
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        print(_table(entries, now_ms))
    return 0


def _servers_url(url: str) -> str | None:
    """``<url>/servers`` (or ``url`` when it already names it); None unless http(s)."""
    url = url.strip()
    # http.client sends the URL as it is: it must already be printable ASCII without spaces.
    if not url.isascii() or not all(char.isprintable() and char != " " for char in url):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # a bad port raises only when it is parsed
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return None
        parts.hostname.encode("idna")  # an empty or over-long label fails here, not in connect
    except ValueError:  # UnicodeError included
        return None
    path = parts.path.rstrip("/")
    if not path.endswith("/servers"):
        path += "/servers"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _table(entries: list[dict[str, Any]], now_ms: int) -> str:
    """The entries as aligned columns under a header row, or ``no servers``."""
    if not entries:
        return "no servers"
    rows = [[*_TABLE_FIELDS, "lastSeen"]]
    for entry in entries:
        cells = [_cell(entry.get(field)) for field in _TABLE_FIELDS]
        last_seen = entry.get("lastSeen")
        if isinstance(last_seen, int) and not isinstance(last_seen, bool):
            cells.append(f"{max(0, now_ms - last_seen) // 1000}s ago")
        else:
            cells.append("-")
        rows.append(cells)
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _cell(value: Any) -> str:
    # Entries come from the network: a control character must not reach the terminal.
    text = "-" if value is None else str(value)
    return "".join(char if char.isprintable() else "?" for char in text)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
