"""The busy clients of a soak (``bench/soak.py``): good clients doing every flow the server
serves, and misbehaving ones, each in a loop until the soak says stop.

Good clients (``zajel.client`` over ``trio_websocket``, each socket bound to its own loopback
source address so the per-IP budgets hold):

- ``pair``: two ``/signal`` connections register (with a public key unless ``quick``), consent-pair
  and relay offers, answers and ICE candidates; then close, and start again with new codes.
- ``relay``: two ``/relay`` connections register as relays, meet at a daily point and an hourly
  token (dead drops, a live match and its ``rendezvous_match`` push), ask for relays, report
  load and heartbeat.
- ``channel``: an owner and two subscribers on ``/signal`` (channel dialect): own, subscribe,
  announce two chunks, both subscribers fetch them (one pull each, multicast) while the owner
  serves the pulls, an upstream message to the owner.
- ``registry`` (HTTP): a VPS server registers, heartbeats, and leaves at the end.
- ``attest`` (HTTP): a device registers with a signed build token, asks for a challenge and
  answers it for a session token.

Misbehaving clients (``bench/_soak_ws.py``), each expecting exactly what the contract names
(docs/protocol/conventions.md, "Frames", "Limits" and "Close codes"); those outcomes are counted
as expected, never as errors:

- ``garbage``: invalid JSON, JSON that is no object, a wrong ``type``, an unknown type, a binary
  frame, a register with a wrongly typed field: each answered by its ``error`` with the
  connection kept; then a message over the size limit (close 1009), invalid UTF-8 (close 1007)
  or an unmasked frame (close 1002).
- ``flood``: sends 1000 pings far past the message rate, gets ``rate_limited`` then the 1008
  close, and keeps sending after it; the server must drop the socket within its 5 s close time.
  Where the server reads the flood no faster than the rate (back-pressure: on a cluster node
  the pings wait for the owner's answers), every ping is answered instead.
- ``never_reader``: a ``/signal`` client with a tiny receive buffer that pairs and then reads
  nothing while its partner pushes large offers at it: it must be dropped as a slow consumer
  and the partner told ``peer_left``, never dropped itself.
- ``half_open``: TCP connect and half an upgrade request, then silence: the server must close it
  within its 10 s head timeout.
- ``abrupt``: a WebSocket that registers, then goes away with an RST or a FIN and no close frame.

A connection refused at a cap (HTTP 503 ``Too many connections``, the contract's answer) is
counted apart (``refused_at_cap``) and tried again; every other failure of a good client, a
reply that is not the expected one, or a misbehaving client that does not get the contract's
answer is an unexpected error (``Tally.error``). Every wait is bounded (``REPLY_TIMEOUT_S``
and the bounds above).
"""

from __future__ import annotations

import json
import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import h11
import trio
import trio_websocket
import wsproto.utilities

from bench._soak_ws import (
    BINARY,
    CLOSE,
    TEXT,
    HandshakeRefused,
    RawWebSocket,
    close_code,
    connect_ws,
    encode_frame,
    open_socket,
    source_addresses,
)
from zajel import crypto
from zajel.attestation import make_reference, region_hmacs, sign_build_token
from zajel.client import (
    RelayClient,
    ServerError,
    SignalClient,
    generate_public_key,
    random_pairing_code,
)
from zajel.clock import epoch_ms

REPLY_TIMEOUT_S: Final = 15.0
CONNECT_TIMEOUT_S: Final = 15.0
# How often a connect refused at a cap (503 "Too many connections") is tried again, waiting
# 0.2 s longer each time.
CAP_RETRIES: Final = 20
MAX_SAMPLES: Final = 20
SAMPLES_PER_KIND: Final = 3
# The server's bounds the misbehaving clients are checked against (docs/protocol/conventions.md):
# the largest message, the head timeout of a handshake and the close time.
MAX_MESSAGE_BYTES: Final = 262_144
HEAD_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 5.0
SLACK_S: Final = 10.0  # on top of a server bound, for a loaded machine

# Secrets and keys the soak's server runs with (bench/soak.py puts them in its environment).
REGISTRY_SECRET: Final = "soak-registry-secret"
CI_SECRET: Final = "soak-ci-secret"
PIPELINE_SEED: Final = bytes(range(100, 132))
ATTESTATION_SEED: Final = bytes(range(200, 232))
BOOTSTRAP_SEED: Final = bytes(range(32))
VERSION: Final = "1.2.0"
PLATFORM: Final = "android"
# The "release binary" of the attestation flow: any fixed bytes do.
BINARY_DATA: Final = random.Random(14).randbytes(256 * 1024)


def server_env() -> dict[str, str]:
    """The keys and secrets the HTTP flows need (none of them a limit)."""
    return {
        "ZAJEL_SERVER_REGISTRY_SECRET": REGISTRY_SECRET,
        "ZAJEL_CI_UPLOAD_SECRET": CI_SECRET,
        "ZAJEL_BUILD_TOKEN_VERIFY_KEY": crypto.public_key_b64(crypto.signing_key(PIPELINE_SEED)),
        "ZAJEL_ATTESTATION_SIGNING_KEY": ATTESTATION_SEED.hex(),
        "ZAJEL_BOOTSTRAP_SIGNING_KEY": BOOTSTRAP_SEED.hex(),
    }


@attrs.define
class Tally:
    """What the busy clients did: good operations, expected outcomes of misbehaviour, and
    unexpected errors (with a few samples)."""

    good: Counter[str] = attrs.field(factory=Counter)
    expected: Counter[str] = attrs.field(factory=Counter)
    errors: Counter[str] = attrs.field(factory=Counter)
    samples: list[str] = attrs.field(factory=list)

    def error(self, kind: str, what: object) -> None:
        if isinstance(what, BaseException):
            what = describe(what)
        self.errors[kind] += 1
        if self.errors[kind] <= SAMPLES_PER_KIND and len(self.samples) < MAX_SAMPLES:
            self.samples.append(f"{kind}: {str(what)[:300]}")


def describe(error: BaseException) -> str:
    """``Type: message`` of an error, or of each error inside an exception group."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}"


@attrs.define
class Load:
    """Where the clients go and how they behave."""

    targets: list[tuple[str, int]]  # (host, port) of each node
    tally: Tally
    quick: bool
    stop: trio.Event = attrs.field(factory=trio.Event)
    sources: list[str] = attrs.field(factory=source_addresses)
    next_source: int = 0

    def source(self) -> str:
        """The next loopback source address, round robin."""
        self.next_source += 1
        return self.sources[self.next_source % len(self.sources)]

    def target(self, index: int) -> tuple[str, int]:
        return self.targets[index % len(self.targets)]

    async def pause(self, low: float, high: float) -> None:
        """Sleep ``low``..``high`` seconds, or until the stop."""
        with trio.move_on_after(random.uniform(low, high)):
            await self.stop.wait()


# -- good WebSocket clients over a bound socket ------------------------------------------------


async def _retry_at_cap(load: Load, attempt: Callable[[], Awaitable[Any]]) -> Any:
    """``attempt()`` (a connect), tried again (bounded) while the server answers 503 at a cap:
    the contract's answer while the connections of a client that just left are still counted."""
    for tries in range(CAP_RETRIES):
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                return await attempt()
        except HandshakeRefused as refused:
            if refused.status != 503 or b"Too many connections" not in refused.body:
                raise
        except trio_websocket.HandshakeError as refused:
            status = getattr(refused, "status_code", None)
            body = getattr(refused, "body", b"") or b""
            if status != 503 or b"Too many connections" not in body:
                raise
        load.tally.expected["refused_at_cap"] += 1
        await trio.sleep(0.2 * (tries + 1))
    raise RuntimeError(f"refused at the connection cap {CAP_RETRIES} times")


@asynccontextmanager
async def _pong_race_forgiven(load: Load, closing: list[bool]) -> AsyncIterator[None]:
    """trio_websocket answers a server ping that arrives while its own close handshake is
    under way with a pong, which wsproto refuses (``LocalProtocolError`` from its reader task):
    a client library's race, not the server's doing. Counted apart, not as an error."""
    try:
        yield
    except* wsproto.utilities.LocalProtocolError as group:
        if not closing:
            raise
        load.tally.expected["client_pong_race_at_close"] += len(group.exceptions)


def _refused_at_cap(group: BaseExceptionGroup[trio_websocket.ConnectionRejected]) -> bool:
    return all(
        refused.status_code == 503 and b"Too many connections" in (refused.body or b"")
        for refused in group.exceptions
    )


@asynccontextmanager
async def bound_ws(
    load: Load, index: int, path: str
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A ``trio_websocket`` connection on ``path`` of node ``index``, from the next source.

    A handshake refused at a cap is tried again, as ``_retry_at_cap`` does; trio_websocket
    raises that refusal from its reader task, so it leaves through the connection's nursery.
    """
    host, port = load.target(index)
    for tries in range(CAP_RETRIES):
        source = load.source()
        closing: list[bool] = []
        opened = False
        try:
            async with _pong_race_forgiven(load, closing), trio.open_nursery() as nursery:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    sock = await open_socket(host, port, source)
                    stream = trio.SocketStream(sock)
                    try:
                        ws = await trio_websocket.wrap_client_stream(
                            nursery, stream, f"{host}:{port}", path, max_message_size=1 << 20
                        )
                    except BaseException:
                        await trio.aclose_forcefully(stream)
                        raise
                opened = True
                try:
                    yield ws
                finally:
                    closing.append(True)
                    with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
                        scope.shield = True
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        except* trio_websocket.ConnectionRejected as group:
            if opened or not _refused_at_cap(group):
                raise
        if opened:
            # Done, however the block ended (``_pong_race_forgiven`` may have taken its error).
            return
        load.tally.expected["refused_at_cap"] += 1
        await trio.sleep(0.2 * (tries + 1))
    raise RuntimeError(f"refused at the connection cap {CAP_RETRIES} times")


@asynccontextmanager
async def signal_client(load: Load, index: int) -> AsyncIterator[SignalClient]:
    async with bound_ws(load, index, "/signal") as ws:
        yield SignalClient(ws, timeout=REPLY_TIMEOUT_S)


@asynccontextmanager
async def relay_client(load: Load, index: int) -> AsyncIterator[RelayClient]:
    async with bound_ws(load, index, "/relay") as ws:
        yield RelayClient(ws, timeout=REPLY_TIMEOUT_S)


GOOD_ERRORS = (
    ServerError,
    trio.TooSlowError,
    trio_websocket.ConnectionClosed,
    trio_websocket.HandshakeError,
    trio.BrokenResourceError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    RuntimeError,
    ExceptionGroup,  # from the nurseries of trio_websocket and of the actors
)

SDP = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" * 8
CANDIDATE = "candidate:842163049 1 udp 1677729535 203.0.113.7 54321 typ srflx raddr 0.0.0.0"


def _expect_from(frame: dict[str, Any], kind: str, sender: str | None) -> None:
    if frame.get("type") != kind or frame.get("from") != sender:
        raise ValueError(f"expected {kind} from {sender}, got {frame!r}")


async def pair_actor(load: Load, index: int) -> None:
    """Pairs on ``/signal`` that relay offers, answers and candidates, again and again."""
    rounds = 3 if load.quick else 6
    key_a, key_b = (None, None) if load.quick else (generate_public_key(), generate_public_key())
    while not load.stop.is_set():
        try:
            async with signal_client(load, index) as a, signal_client(load, index + 1) as b:
                await a.register(random_pairing_code(), key_a)
                await b.register(random_pairing_code(), key_b)
                await a.pair_request(b.code or "")
                await b.expect("pair_incoming")
                await b.pair_response(a.code or "", True)
                await a.expect("pair_matched")
                await b.expect("pair_matched")
                load.tally.good["pairs"] += 1
                for _ in range(rounds):
                    await a.signal("offer", b.code or "", {"type": "offer", "sdp": SDP})
                    _expect_from(await b.expect("offer"), "offer", a.code)
                    await b.signal("answer", a.code or "", {"type": "answer", "sdp": SDP})
                    _expect_from(await a.expect("answer"), "answer", b.code)
                    for number in range(2):
                        payload = {"candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": number}
                        await a.signal("ice_candidate", b.code or "", payload)
                        _expect_from(await b.expect("ice_candidate"), "ice_candidate", a.code)
                    load.tally.good["signals_relayed"] += 4
                    await load.pause(0.5, 1.5)
        except GOOD_ERRORS as error:
            load.tally.error("pair", error)
            await load.pause(1, 2)


async def relay_actor(load: Load, index: int) -> None:
    """Relays on ``/relay`` that meet at a point and a token, again and again."""
    point, token = f"soak-point-{index}", f"soak-token-{index}"
    cycle = 0
    while not load.stop.is_set():
        cycle += 1
        a_id, b_id = f"soak-{index}-{cycle}-a", f"soak-{index}-{cycle}-b"
        try:
            async with relay_client(load, index) as a, relay_client(load, index + 1) as b:
                await a.register(a_id, max_connections=20)
                await b.register(b_id, max_connections=20)
                await a.register_rendezvous(
                    daily_points=[point], hourly_tokens=[token], dead_drop="drop-a", relay_id=a_id
                )
                result = await b.register_rendezvous(
                    daily_points=[point], hourly_tokens=[token], dead_drop="drop-b"
                )
                if a_id not in [match.get("peerId") for match in result["liveMatches"]]:
                    raise ValueError(f"{a_id} not among the live matches: {result!r}")
                if "drop-a" not in [drop.get("deadDrop") for drop in result["deadDrops"]]:
                    raise ValueError(f"the dead drop of {a_id} not found: {result!r}")
                match = await a.wait_rendezvous_match()
                if match["match"]["peerId"] != b_id:
                    raise ValueError(f"expected a match with {b_id}, got {match!r}")
                relays = await b.get_relays(5)
                if not isinstance(relays, list):
                    raise ValueError(f"relays is no list: {relays!r}")
                for _ in range(3 if load.quick else 6):
                    await a.update_load(random.randint(0, 19))
                    await a.heartbeat()
                    await b.heartbeat()
                    load.tally.good["relay_updates"] += 1
                    await load.pause(0.5, 1.5)
                load.tally.good["rendezvous"] += 1
        except GOOD_ERRORS as error:
            load.tally.error("relay", error)
            await load.pause(1, 2)


async def channel_actor(load: Load, index: int) -> None:
    """A channel's owner and two subscribers: chunks announced, pulled once, delivered."""
    channel = f"soak-ch-{index}-{secrets.token_hex(4)}"
    owner_key = None if load.quick else generate_public_key()
    cycle = 0
    while not load.stop.is_set():
        cycle += 1
        chunks = {
            f"{channel}-{cycle}-{n}": {"encrypted_payload": secrets.token_urlsafe(3000)}
            for n in range(2)
        }
        try:
            async with (
                signal_client(load, index) as owner,
                signal_client(load, index + 1) as first,
                signal_client(load, index) as second,
            ):
                await owner.register(random_pairing_code(), owner_key)
                await owner.own_channel(channel)
                for subscriber in (first, second):
                    await subscriber.register(random_pairing_code())
                    await subscriber.subscribe(channel)
                await owner.publish(channel, chunks)
                for subscriber in (first, second):
                    # A new subscriber first hears of the chunks already cached, oldest first.
                    announced: set[str] = set()
                    for _ in range(10):
                        available = await subscriber.wait_chunk_available(channel)
                        announced.update(available["chunkIds"])
                        if set(chunks) <= announced:
                            break
                    else:
                        raise ValueError(f"chunk_available never named {sorted(chunks)}")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(owner.serve_pulls, chunks)
                    for subscriber in (first, second):
                        for chunk_id, data in chunks.items():
                            got = await subscriber.fetch_chunk(chunk_id, channel)
                            if got["data"] != data:
                                raise ValueError(f"chunk {chunk_id} came back changed")
                            load.tally.good["chunks_fetched"] += 1
                    nursery.cancel_scope.cancel()
                message = {"id": f"up-{cycle}", "type": "reply", "body": "soak"}
                await first.upstream(channel, message, generate_public_key())
                forwarded = await owner.wait_upstream(channel)
                if forwarded["message"]["id"] != message["id"]:
                    raise ValueError(f"upstream came back changed: {forwarded!r}")
                load.tally.good["channel_cycles"] += 1
                await load.pause(1, 3)
        except GOOD_ERRORS as error:
            load.tally.error("channel", error)
            await load.pause(1, 2)


# -- HTTP flows ---------------------------------------------------------------------------


async def http_request(
    load: Load, index: int, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """One HTTP/1.1 request (``Connection: close``) to node ``index`` from the next source;
    the status and the decoded JSON body."""
    host, port = load.target(index)
    payload = b"" if body is None else json.dumps(body).encode()
    headers = [("Host", f"{host}:{port}"), ("Connection", "close")]
    headers.append(("Content-Length", str(len(payload))))
    if body is not None:
        headers.append(("Content-Type", "application/json"))
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    connection = h11.Connection(h11.CLIENT)
    with trio.fail_after(REPLY_TIMEOUT_S):
        sock = await open_socket(host, port, load.source())
        stream = trio.SocketStream(sock)
        async with stream:
            request = h11.Request(method=method, target=path, headers=headers)
            await stream.send_all(connection.send(request) + connection.send(h11.Data(payload)))
            await stream.send_all(connection.send(h11.EndOfMessage()))
            status, data = 0, b""
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    data += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    return status, json.loads(data) if data else None


def _check(status: int, body: Any, what: str) -> Any:
    if status != 200:
        raise ValueError(f"{what}: {status} {body!r}")
    return body


async def registry_actor(load: Load, index: int) -> None:
    """A VPS server that registers, heartbeats every few seconds, and leaves at the stop."""
    server_id = f"soak-vps-{index}-{secrets.token_hex(3)}"
    entry = {
        "serverId": server_id,
        "endpoint": f"wss://{server_id}.relay.example.com/ws",
        "publicKey": f"pk-{server_id:0>40}",
        "region": "eu-west",
        "connections": 0,
    }
    try:
        _check(*await http_request(load, index, "POST", "/servers", entry, REGISTRY_SECRET), "reg")
        load.tally.good["servers_registered"] += 1
        while not load.stop.is_set():
            await load.pause(2, 4)
            beat = {"serverId": server_id, "connections": random.randint(0, 50)}
            _check(
                *await http_request(
                    load, index, "POST", "/servers/heartbeat", beat, REGISTRY_SECRET
                ),
                "heartbeat",
            )
            load.tally.good["server_heartbeats"] += 1
    except (ValueError, OSError, trio.TooSlowError, h11.ProtocolError) as error:
        load.tally.error("registry", error)
    finally:
        with trio.CancelScope(shield=True):
            try:
                path = f"/servers/{server_id}"
                _check(
                    *await http_request(load, index, "DELETE", path, None, REGISTRY_SECRET), "del"
                )
            except (ValueError, OSError, trio.TooSlowError, h11.ProtocolError) as error:
                load.tally.error("registry", f"leave: {type(error).__name__}: {error}")


async def upload_reference(load: Load) -> None:
    """The release pipeline uploads the reference of ``BINARY_DATA`` (once, before the load)."""
    reference = make_reference(BINARY_DATA, version=VERSION, platform=PLATFORM, regions=8)
    _check(
        *await http_request(load, 0, "POST", "/attest/upload-reference", reference, CI_SECRET),
        "upload-reference",
    )


async def attest_actor(load: Load, index: int) -> None:
    """Devices that register, get a challenge and answer it, one after another."""
    number = 0
    while not load.stop.is_set():
        number += 1
        device = f"soak-device-{index}-{number}-{secrets.token_hex(3)}"
        token = sign_build_token(
            PIPELINE_SEED,
            version=VERSION,
            platform=PLATFORM,
            build_hash="soak-build",
            timestamp_ms=epoch_ms(),
        )
        try:
            body = {"device_id": device, "build_token": token}
            _check(*await http_request(load, index, "POST", "/attest/register", body), "register")
            body = {"device_id": device, "build_version": VERSION}
            issued = _check(
                *await http_request(load, index, "POST", "/attest/challenge", body), "challenge"
            )
            places = [(region["offset"], region["length"]) for region in issued["regions"]]
            hmacs = region_hmacs(BINARY_DATA, issued["nonce"], places)
            responses = [
                {"region_index": region["index"], "hmac": hmac}
                for region, hmac in zip(issued["regions"], hmacs, strict=True)
            ]
            body = {"device_id": device, "nonce": issued["nonce"], "responses": responses}
            verified = _check(
                *await http_request(load, index, "POST", "/attest/verify", body), "verify"
            )
            if not verified.get("session_token"):
                raise ValueError(f"verify gave no session token: {verified!r}")
            load.tally.good["attestations"] += 1
        except (ValueError, KeyError, OSError, trio.TooSlowError, h11.ProtocolError) as error:
            load.tally.error("attest", error)
        await load.pause(1.5, 3)


# -- misbehaving clients -----------------------------------------------------------------


async def raw_ws(load: Load, index: int, path: str, **options: Any) -> RawWebSocket:
    host, port = load.target(index)
    source = load.source()
    result: RawWebSocket = await _retry_at_cap(
        load, lambda: connect_ws(host, port, path, source, **options)
    )
    return result


async def next_text(ws: RawWebSocket, within: float) -> dict[str, Any]:
    """The next text frame as JSON (pongs of the server's pings skipped); raises on a close,
    the end of the stream or silence."""
    with trio.fail_after(within):
        while True:
            for opcode, payload in await ws.frames() or [(CLOSE, b"")]:
                if opcode == CLOSE:
                    raise ValueError(f"closed ({close_code(payload)}) while a reply was due")
                if opcode == TEXT:
                    frame: dict[str, Any] = json.loads(payload)
                    return frame


async def wait_close(ws: RawWebSocket, within: float) -> tuple[int | str, list[dict[str, Any]]]:
    """Read until the server's close frame or the end of the stream (at most ``within``):
    its close code (or how the stream ended without one: ``"eof"``, ``"reset"``) and the text
    frames before it."""
    texts: list[dict[str, Any]] = []
    with trio.fail_after(within):
        try:
            while frames := await ws.frames():
                for opcode, payload in frames:
                    if opcode == CLOSE:
                        return close_code(payload), texts
                    if opcode == TEXT:
                        texts.append(json.loads(payload))
        except OSError as error:
            return f"reset ({error})", texts
    return "eof", texts


# What each garbage message must get (docs/protocol/conventions.md, "Frames" and "Errors").
GARBAGE: Final = [
    (TEXT, b"{not json", ("invalid_message",)),
    (TEXT, b"[1, 2, 3]", ("invalid_message",)),
    (TEXT, b'{"type": 5}', ("invalid_message",)),
    (TEXT, b'{"type": "no_such_type"}', ("unknown_type",)),
    (BINARY, b"\x00\x01binary", ("invalid_message",)),
    (TEXT, b'{"type":"register","pairingCode":12345,"peerId":12345}', ("invalid_field",)),
    # Each endpoint's own message on the other endpoint is an unknown type there.
    (TEXT, b'{"type":"offer","target":"ABCDEF","payload":{}}', ("not_registered", "unknown_type")),
    (TEXT, b'{"type":"get_relays","count":"many"}', ("not_registered", "unknown_type")),
]
# How a garbage client ends: the frame and the close code it must get.
GARBAGE_ENDINGS: Final = [
    ("oversized", TEXT, b'{"type":"ping","pad":"' + b"x" * MAX_MESSAGE_BYTES + b'"}', True, 1009),
    ("invalid_utf8", TEXT, b'{"type":"ping","x":"\xff\xfe"}', True, 1007),
    ("unmasked", TEXT, b'{"type":"ping"}', False, 1002),
]


async def garbage_actor(load: Load, index: int) -> None:
    while not load.stop.is_set():
        path = "/signal" if index % 2 == 0 else "/relay"
        try:
            ws = await raw_ws(load, index, path)
        except (HandshakeRefused, OSError, trio.TooSlowError, RuntimeError) as error:
            load.tally.error("garbage", f"connect: {type(error).__name__}: {error}")
            await load.pause(1, 2)
            continue
        try:
            for opcode, data, codes in GARBAGE:
                await ws.send_frame(opcode, data)
                reply = await next_text(ws, REPLY_TIMEOUT_S)
                if reply.get("type") != "error" or reply.get("code") not in codes:
                    raise ValueError(f"{data[:40]!r} got {reply!r}, expected {codes}")
                load.tally.expected["garbage_error_replies"] += 1
                await load.pause(0.1, 0.5)
            name, opcode, data, masked, code = random.choice(GARBAGE_ENDINGS)
            sent_at = trio.current_time()
            await ws.send_frame(opcode, data, masked=masked)
            got, texts = await wait_close(ws, REPLY_TIMEOUT_S)
            took = trio.current_time() - sent_at
            if name == "oversized" and isinstance(got, str) and got.startswith("reset"):
                # The server stops reading at the oversized head and closes with the rest of
                # the payload unread, so its kernel resets the connection; a reset that
                # overtakes the 1009 close frame drops it from the client's buffer. Counted
                # apart (docs/benchmarks.md, "Soak").
                load.tally.expected["close_1009_lost_to_reset"] += 1
            elif got != code:
                raise ValueError(
                    f"{name} frame: {got} after {took:.2f} s, expected close {code} "
                    f"(frames before: {texts[:3]})"
                )
            else:
                load.tally.expected[f"close_{code}_{name}"] += 1
        except (ValueError, OSError, trio.TooSlowError, ExceptionGroup) as error:
            load.tally.error("garbage", error)
        finally:
            ws.drop()
        await load.pause(0.2, 1)


async def flood_actor(load: Load, index: int) -> None:
    """Pings far past the message rate without waiting for answers. The contract's answers:
    ``rate_limited`` errors and, as the flood goes on, the 1008 close, after which the socket is
    dropped within the close time although the client keeps sending. Where the server reads the
    flood no faster than the rate (it stops reading a client while 8 of its frames are being
    handled: on a cluster node the pings go to the service's owner on the other node), the
    flood is slowed down in TCP instead, and every ping is answered: also the contract's."""
    while not load.stop.is_set():
        try:
            ws = await raw_ws(load, index, "/signal" if index % 2 else "/relay")
        except (HandshakeRefused, OSError, trio.TooSlowError, RuntimeError) as error:
            load.tally.error("flood", f"connect: {type(error).__name__}: {error}")
            await load.pause(1, 2)
            continue
        try:
            sending = Flood()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_sending, ws, sending)
                began = trio.current_time()
                code, answers = await read_flood(ws, sending)
                sending.closed_at = trio.current_time()
                if code is None:
                    if answers["pong"] + answers["rate_limited"] != FLOOD_FRAMES:
                        raise ValueError(f"flood: no close, and the answers were {answers}")
                    load.tally.expected["flood_absorbed_by_back_pressure"] += 1
                    raise Absorbed
                if code != 1008 or not answers["rate_limited"]:
                    raise ValueError(f"flood: close {code} after the answers {answers}")
                load.tally.expected["close_1008_flood"] += 1
                # Not answering the close: the server must drop the socket within its close
                # time, whatever still arrives.
                with trio.move_on_after(CLOSE_TIMEOUT_S + SLACK_S) as waiting:
                    try:
                        while await ws.frames():
                            pass
                    except OSError:
                        pass
                if waiting.cancelled_caught:
                    raise ValueError(
                        f"socket not dropped {CLOSE_TIMEOUT_S + SLACK_S} s after the close "
                        f"(the close came {sending.closed_at - began:.1f} s after the flood began)"
                    )
                load.tally.expected["flood_dropped_after_close"] += 1
        except* Absorbed:
            pass
        except* (ValueError, OSError, trio.TooSlowError) as group:
            load.tally.error("flood", group)
        finally:
            ws.drop()
        await load.pause(0.5, 2)


class Absorbed(Exception):
    """A flood that the server answered in full, never reading it faster than the rate."""


FLOOD_BURST: Final = 20
FLOOD_FRAMES: Final = 50 * FLOOD_BURST
PING_BURST: Final = b"".join(encode_frame(TEXT, b'{"type":"ping"}') for _ in range(FLOOD_BURST))
FLOOD_TIMEOUT_S: Final = 60.0


@attrs.define
class Flood:
    sent: int = 0
    done: bool = False
    closed_at: float | None = None


async def keep_sending(ws: RawWebSocket, flood: Flood) -> None:
    """A flood's sending side: bursts of pings, ``FLOOD_FRAMES`` at most, and on for 1 s after
    the server's close."""
    try:
        for _ in range(FLOOD_FRAMES // FLOOD_BURST):
            if flood.closed_at is not None and trio.current_time() > flood.closed_at + 1:
                return
            try:
                await ws.send_all(PING_BURST)
            except OSError:
                return
            flood.sent += FLOOD_BURST
            await trio.sleep(0.01)
    finally:
        flood.done = True


async def read_flood(ws: RawWebSocket, flood: Flood) -> tuple[int | None, Counter[str]]:
    """The answers to a flood until the server's close (its code), or until every frame sent
    was answered (``None``); at most ``FLOOD_TIMEOUT_S``."""
    answers: Counter[str] = Counter()
    with trio.move_on_after(FLOOD_TIMEOUT_S):
        while True:
            frames = await ws.frames()
            if not frames:
                raise ValueError(f"flood: the stream ended without a close after {answers}")
            for opcode, payload in frames:
                if opcode == CLOSE:
                    return close_code(payload), answers
                if opcode == TEXT:
                    frame = json.loads(payload)
                    answers[frame.get("code") or frame.get("type")] += 1
            if flood.done and sum(answers.values()) >= flood.sent:
                return None, answers
    raise ValueError(
        f"flood: neither a close nor every answer within {FLOOD_TIMEOUT_S} s: "
        f"{flood.sent} sent (sending done: {flood.done}), answers {dict(answers)}"
    )


async def push_offers(
    pusher: SignalClient, code: str, offer: dict[str, Any], done: trio.Event
) -> None:
    """The never-reader's partner: large offers, under the message rate (bounded: ~25 MB),
    until ``done``. Never cancelled in the middle of a send: half a frame would leave the
    WebSocket stream corrupt."""
    for _ in range(400):
        if done.is_set():
            return
        await pusher.signal("offer", code, offer)
        with trio.move_on_after(0.015):
            await done.wait()


async def never_reader_actor(load: Load, index: int) -> None:
    """A client that stops reading while its partner pushes at it: dropped as a slow consumer;
    the partner is told ``peer_left`` and kept."""
    big = {"type": "offer", "sdp": "v=0 " + "a" * 60_000}
    while not load.stop.is_set():
        reader: RawWebSocket | None = None
        try:
            async with signal_client(load, index) as pusher:
                await pusher.register(random_pairing_code())
                reader = await raw_ws(load, index + 1, "/signal", rcvbuf=4096)
                code = random_pairing_code()
                await reader.send_text(json.dumps({"type": "register", "pairingCode": code}))
                await reader.send_text(
                    json.dumps({"type": "pair_request", "targetCode": pusher.code})
                )
                await pusher.expect("pair_incoming")
                await pusher.pair_response(code, True)
                await pusher.expect("pair_matched")
                left = False
                with trio.fail_after(REPLY_TIMEOUT_S + 2 * SLACK_S):
                    done = trio.Event()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(push_offers, pusher, code, big, done)
                        while not left:
                            frame = await pusher.receive()
                            if frame.get("type") == "peer_left":
                                left = frame.get("pairingCode") == code
                            elif frame.get("type") == "error":
                                if frame.get("code") != "peer_not_found":
                                    raise ServerError(frame, ("peer_left",))
                            else:
                                raise ServerError(frame, ("peer_left",))
                        done.set()
                load.tally.expected["slow_consumer_dropped"] += 1
                # The partner is still served: a ping answered, after the errors of the offers
                # that were on their way when the reader was dropped.
                await pusher.send({"type": "ping"})
                while (frame := await pusher.expect("pong", "error"))["type"] == "error":
                    if frame.get("code") != "peer_not_found":
                        raise ServerError(frame, ("pong",))
        except GOOD_ERRORS as error:
            load.tally.error("never_reader", error)
        finally:
            if reader is not None:
                reader.abort()
        await load.pause(1, 3)


async def half_open_actor(load: Load, index: int) -> None:
    """Half an upgrade request, then silence: closed within the head timeout."""
    while not load.stop.is_set():
        host, port = load.target(index)
        try:
            sock = await open_socket(host, port, load.source())
        except OSError as error:
            load.tally.error("half_open", f"connect: {error}")
            await load.pause(1, 2)
            continue
        try:
            partial = f"GET /signal HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            await RawWebSocket(sock).send_all(partial.encode())
            with trio.fail_after(HEAD_TIMEOUT_S + SLACK_S):
                try:
                    while await sock.recv(4096):
                        pass
                except OSError:
                    pass
            load.tally.expected["half_open_closed_by_server"] += 1
        except (OSError, trio.TooSlowError) as error:
            load.tally.error("half_open", f"not closed: {type(error).__name__}: {error}")
        finally:
            sock.close()
        await load.pause(0.1, 1)


async def abrupt_actor(load: Load, index: int) -> None:
    """A registered connection that vanishes: an RST or a FIN, no close frame."""
    while not load.stop.is_set():
        signal = index % 2 == 0
        try:
            ws = await raw_ws(load, index, "/signal" if signal else "/relay")
        except (HandshakeRefused, OSError, trio.TooSlowError, RuntimeError) as error:
            load.tally.error("abrupt", f"connect: {type(error).__name__}: {error}")
            await load.pause(1, 2)
            continue
        try:
            if signal:
                register = {"type": "register", "pairingCode": random_pairing_code()}
            else:
                register = {"type": "register", "peerId": f"soak-abrupt-{secrets.token_hex(6)}"}
            await ws.send_text(json.dumps(register))
            reply = await next_text(ws, REPLY_TIMEOUT_S)
            if reply.get("type") != "registered":
                raise ValueError(f"register got {reply!r}")
            await load.pause(0.5, 3)
            if random.random() < 0.5:
                ws.abort()
                load.tally.expected["abrupt_rst"] += 1
            else:
                ws.drop()
                load.tally.expected["abrupt_fin"] += 1
        except (ValueError, OSError, trio.TooSlowError, ExceptionGroup) as error:
            load.tally.error("abrupt", error)
        finally:
            ws.drop()
        await load.pause(0.1, 0.5)


# -- the mix ------------------------------------------------------------------------------

# Each kind: its actor, the WebSocket connections one actor holds, and its share of the busy
# connections (good and misbehaving half and half). ``half_open`` holds a TCP connection that
# never becomes a WebSocket.
MIX: Final[dict[str, tuple[Callable[[Load, int], Awaitable[None]], int, float]]] = {
    "pair": (pair_actor, 2, 0.20),
    "relay": (relay_actor, 2, 0.15),
    "channel": (channel_actor, 3, 0.15),
    "garbage": (garbage_actor, 1, 0.14),
    "flood": (flood_actor, 1, 0.06),
    "never_reader": (never_reader_actor, 2, 0.04),
    "half_open": (half_open_actor, 1, 0.10),
    "abrupt": (abrupt_actor, 1, 0.16),
}
HTTP_ACTORS: Final = {"registry": registry_actor, "attest": attest_actor}


def actor_counts(busy: int) -> dict[str, int]:
    """How many actors of each kind make ``busy`` connections (at least one of each)."""
    return {kind: max(1, round(busy * share / conns)) for kind, (_, conns, share) in MIX.items()}


async def run_load(
    load: Load, busy: int, http_actors: int, finish_timeout: float
) -> dict[str, int]:
    """Run every busy client until ``load.stop``; then let each finish its cycle for at most
    ``finish_timeout`` seconds and cancel what is left (counted as ``cancelled_at_stop``). The
    actor counts."""
    counts = actor_counts(busy)
    await upload_reference(load)
    running: set[int] = set()
    finished = trio.Event()

    async def tracked(actor: Callable[[Load, int], Awaitable[None]], serial: int) -> None:
        running.add(serial)
        try:
            await actor(load, serial)
        finally:
            running.discard(serial)
            if not running and load.stop.is_set():
                finished.set()

    async with trio.open_nursery() as nursery:
        serial = 0
        for kind, count in counts.items():
            actor = MIX[kind][0]
            for _ in range(count):
                serial += 1
                nursery.start_soon(tracked, actor, serial)
        for actor in HTTP_ACTORS.values():
            for _ in range(http_actors):
                serial += 1
                nursery.start_soon(tracked, actor, serial)
        counts.update(dict.fromkeys(HTTP_ACTORS, http_actors))
        await load.stop.wait()
        if not running:
            finished.set()
        with trio.move_on_after(finish_timeout):
            await finished.wait()
        if running:
            load.tally.expected["cancelled_at_stop"] += len(running)
            nursery.cancel_scope.cancel()
    return counts


def busy_connections(busy: int) -> int:
    """The WebSocket connections the busy actors hold at most (``half_open`` excluded)."""
    counts = actor_counts(busy)
    return sum(counts[k] * MIX[k][1] for k in MIX if k != "half_open")


__all__ = [
    "HTTP_ACTORS",
    "MIX",
    "Load",
    "Tally",
    "actor_counts",
    "busy_connections",
    "run_load",
    "server_env",
]
