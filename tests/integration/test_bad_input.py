"""Bad input on WebSocket ``/signal`` (docs/protocol/conventions.md: "Frames", "Errors",
"Identifiers and field checks", "Limits"): every malformed frame gets one exact error frame, checks
run in the documented order, and the connection goes on working afterwards. Only an oversized frame
and a flood close it."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
import trio
import trio_websocket
from wsproto.events import TextMessage

from tests.conftest import ALL_DEPLOYMENTS, ZAJEL_SERVE, deployments, make_config, start_server
from tests.integration._raw import RawClient, port_of
from tests.integration._signal import error, expect, open_socket, read_until_closed
from zajel.client import SignalClient, connect_signal, generate_public_key
from zajel.protocol import signaling

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app
# (but one: see ``zajel_serve``).
server = deployments(ALL_DEPLOYMENTS)
# zajel serve's transports alone: under a plain hypercorn 0.18 a bad frame sent right after
# the handshake can meet hypercorn's first ping on the socket, and hypercorn's server ends with
# trio.BusyResourceError (docs/operations.md, "Under another ASGI server").
zajel_serve = deployments(ZAJEL_SERVE, name="zajel_serve")

CODE, OTHER = "AAAAAA", "BBBBBB"
KEY = generate_public_key()
RELAY_TYPES = tuple(sorted(signaling.RELAY_TYPES))
MISSING = object()
INVALID_FORMAT = "Invalid message format"


def j(**fields: Any) -> str:
    """A JSON text frame; a field whose value is MISSING is left out."""
    return json.dumps({name: value for name, value in fields.items() if value is not MISSING})


def names(field: str) -> re.Pattern[str]:
    """An error message that names ``field`` (in camelCase or in words)."""
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", field)
    return re.compile(f"{re.escape(field)}|{re.escape(words)}", re.IGNORECASE)


def b64(size: int, *, byte: int = 7) -> str:
    return base64.b64encode(bytes([byte]) * size).decode()


BAD_CODES = [
    ("missing", MISSING),
    ("null", None),
    ("number", 234567),
    ("list", [CODE]),
    ("empty", ""),
    ("lowercase", "abcdef"),
    ("5 chars", "ABCDE"),
    ("7 chars", "ABCDEFG"),
    ("letter O", "ABCDEO"),
    ("digit 0", "ABCDE0"),
    ("digit 1", "ABCDE1"),
    ("letter I", "ABCDEI"),
    ("trailing newline", "ABCDEF\n"),
]
BAD_KEYS = [
    ("number", 12345),
    ("list", [KEY]),
    ("empty", ""),
    ("not base64", "!" * 44),
    ("31 bytes", b64(31)),
    ("33 bytes", b64(33)),
    ("url-safe alphabet", base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode()),
]
BAD_PAYLOADS = [
    ("missing", MISSING),
    ("null", None),
    ("list", [{"sdp": "x"}]),
    ("string", '{"sdp":"x"}'),
    ("number", 1),
    ("true", True),
]

# (name, frame, code, message: exact text or a pattern it must contain)
Case = tuple[str, str | bytes, str, str | re.Pattern[str]]

FRAME_CASES: list[Case] = [
    ("binary frame", b'{"type":"ping"}', "invalid_message", INVALID_FORMAT),
    ("not JSON", "hello", "invalid_message", INVALID_FORMAT),
    ("empty text", "", "invalid_message", INVALID_FORMAT),
    ("truncated JSON", '{"type":"ping"', "invalid_message", INVALID_FORMAT),
    ("JSON array", '[{"type":"ping"}]', "invalid_message", INVALID_FORMAT),
    ("JSON string", '"ping"', "invalid_message", INVALID_FORMAT),
    ("JSON number", "42", "invalid_message", INVALID_FORMAT),
    ("JSON null", "null", "invalid_message", INVALID_FORMAT),
    ("JSON true", "true", "invalid_message", INVALID_FORMAT),
    ("object without type", '{"pairingCode":"AAAAAA"}', "invalid_message", INVALID_FORMAT),
    ("type number", '{"type":1}', "invalid_message", INVALID_FORMAT),
    ("type null", '{"type":null}', "invalid_message", INVALID_FORMAT),
    ("type list", '{"type":["ping"]}', "invalid_message", INVALID_FORMAT),
    ("type object", '{"type":{"ping":1}}', "invalid_message", INVALID_FORMAT),
    ("type bool", '{"type":true}', "invalid_message", INVALID_FORMAT),
    ("NaN", '{"type":"ping","n":NaN}', "invalid_message", INVALID_FORMAT),
    ("Infinity", '{"type":"ping","n":Infinity}', "invalid_message", INVALID_FORMAT),
    ("-Infinity", '{"type":"ping","n":-Infinity}', "invalid_message", INVALID_FORMAT),
    ("deeply nested array", "[" * 100_000, "invalid_message", INVALID_FORMAT),
    (
        "deeply nested field",
        '{"type":"ping","x":' + "[" * 100_000,
        "invalid_message",
        INVALID_FORMAT,
    ),
    ("deeply nested closed", "[" * 50_000 + "]" * 50_000, "invalid_message", INVALID_FORMAT),
    ("unknown type", '{"type":"hello"}', "unknown_type", "Unknown message type: hello"),
    ("empty type", '{"type":""}', "unknown_type", "Unknown message type: "),
    ("type case", '{"type":"PING"}', "unknown_type", "Unknown message type: PING"),
]

REGISTER_CASES: list[Case] = [
    *(
        (f"register pairingCode {label}", j(type="register", pairingCode=value), "invalid_field",
         "Invalid pairing code format")
        for label, value in BAD_CODES
    ),
    *(
        (f"register publicKey {label}", j(type="register", pairingCode=CODE, publicKey=value),
         "invalid_field", names("publicKey"))
        for label, value in BAD_KEYS
    ),
]  # fmt: skip

# On an unregistered connection the registration check comes before the fields.
NOT_REGISTERED_CASES: list[Case] = [
    (f"unregistered {name}", frame, "not_registered", re.compile("regist", re.IGNORECASE))
    for name, frame in [
        ("offer without target", j(type="offer", payload={})),
        ("offer with list payload", j(type="offer", target=OTHER, payload=[])),
        ("valid offer", j(type="offer", target=OTHER, payload={})),
        ("long candidate", j(type="call_ice", target=OTHER, payload={"candidate": "c" * 5000})),
        ("pair_request with bad code", j(type="pair_request", targetCode="nope")),
        ("pair_response without accepted", j(type="pair_response", targetCode=OTHER)),
        ("pair_accept without targetCode", j(type="pair_accept")),
    ]
]  # fmt: skip

# On a registered connection: every field of every message.
FIELD_CASES: list[Case] = [
    *(
        (f"pair_request targetCode {label}", j(type="pair_request", targetCode=value),
         "invalid_field", names("targetCode"))
        for label, value in BAD_CODES
    ),
    *(
        (f"pair_request proposedName {label}",
         j(type="pair_request", targetCode=OTHER, proposedName=value), "invalid_field",
         names("proposedName"))
        for label, value in [("number", 7), ("list", ["x"]), ("65 chars", "n" * 65)]
    ),
    *(
        (f"{kind} targetCode {label}", j(type=kind, targetCode=value, accepted=True),
         "invalid_field", names("targetCode"))
        for kind in ("pair_response", "pair_accept", "pair_reject")
        for label, value in BAD_CODES
    ),
    *(
        (f"pair_response accepted {label}",
         j(type="pair_response", targetCode=OTHER, accepted=value), "invalid_field",
         names("accepted"))
        for label, value in [("missing", MISSING), ("null", None), ("string yes", "yes"),
                             ("string true", "true"), ("number 1", 1), ("number 0", 0),
                             ("list", [True])]
    ),
    *(
        (f"{kind} target {label}", j(type=kind, target=value, payload={}), "invalid_field",
         names("target"))
        for kind in RELAY_TYPES
        for label, value in BAD_CODES
    ),
    *(
        (f"{kind} payload {label}", j(type=kind, target=OTHER, payload=value), "invalid_field",
         names("payload"))
        for kind in RELAY_TYPES
        for label, value in BAD_PAYLOADS
    ),
    ("register on a registered connection, bad code", j(type="register", pairingCode="x"),
     "invalid_field", "Invalid pairing code format"),
    ("binary frame when registered", b"\x00\x01", "invalid_message", INVALID_FORMAT),
    ("unknown type when registered", '{"type":"join"}', "unknown_type",
     "Unknown message type: join"),
]  # fmt: skip


async def assert_error(client: SignalClient, code: str, message: str | re.Pattern[str]) -> None:
    frame = await client.receive()
    assert frame.keys() == {"type", "code", "message"}, frame
    assert (frame["type"], frame["code"]) == ("error", code), frame
    if isinstance(message, str):
        assert frame["message"] == message
    else:
        assert isinstance(frame["message"], str)
        assert message.search(frame["message"]), frame


@pytest.mark.parametrize(
    ("name", "frame", "code", "message"),
    [
        pytest.param(*case, id=case[0])
        for case in FRAME_CASES + REGISTER_CASES + NOT_REGISTERED_CASES
    ],
)
async def test_bad_frame_on_an_unregistered_connection(server, name, frame, code, message):
    with trio.fail_after(10):
        async with connect_signal(server.url) as client:
            await client.ws.send_message(frame)
            await assert_error(client, code, message)
            # The connection goes on: ping, then register.
            await client.send({"type": "ping"})
            await expect(client, {"type": "pong"})
            assert (await client.register(CODE, KEY))["pairingCode"] == CODE


@pytest.mark.parametrize(
    ("name", "frame", "code", "message"),
    [pytest.param(*case, id=case[0]) for case in FIELD_CASES],
)
async def test_bad_field_on_a_registered_connection(server, name, frame, code, message):
    with trio.fail_after(10):
        async with connect_signal(server.url) as client:
            await client.register(CODE, KEY)
            await client.ws.send_message(frame)
            await assert_error(client, code, message)
            await client.send({"type": "ping"})
            await expect(client, {"type": "pong"})
            # Still registered under its code: re-registering it is not "in use".
            assert (await client.register(CODE, KEY))["pairingCode"] == CODE


async def test_null_counts_as_absent(server):
    with trio.fail_after(10):
        async with connect_signal(server.url) as a, connect_signal(server.url) as b:
            await a.send({"type": "register", "pairingCode": CODE, "publicKey": None})
            assert (await a.expect("registered"))["pairingCode"] == CODE
            await b.register(OTHER, KEY)
            await a.send({"type": "pair_request", "targetCode": OTHER, "proposedName": None})
            await expect(
                b,
                {
                    "type": "pair_incoming",
                    "fromCode": CODE,
                    "fromPublicKey": None,
                    "expiresIn": 120_000,
                },
            )


async def test_boundary_values_are_accepted_and_unknown_fields_ignored(server):
    with trio.fail_after(10):
        async with connect_signal(server.url) as a, connect_signal(server.url) as b:
            await a.send({"type": "register", "pairingCode": CODE, "publicKey": KEY, "x": [1]})
            assert (await a.expect("registered"))["pairingCode"] == CODE
            await b.register(OTHER, b64(32, byte=0xFB))  # "+" and "/" in the key
            name = "n" * 64
            await a.send(
                {"type": "pair_request", "targetCode": OTHER, "proposedName": name, "x": 1}
            )
            assert (await b.expect("pair_incoming"))["proposedName"] == name
            await b.send({"type": "pair_response", "targetCode": CODE, "accepted": True, "y": None})
            assert (await a.expect("pair_matched"))["peerPublicKey"] == b64(32, byte=0xFB)


async def test_a_frame_at_the_size_limit_is_served_and_one_byte_more_closes_1009(server):
    limit = server.config.ws_max_message_bytes
    prefix = '{"type":"ping","pad":"'
    at_limit = prefix + "p" * (limit - len(prefix) - 2) + '"}'
    assert len(at_limit.encode()) == limit
    with trio.fail_after(10):
        async with open_socket(server.url) as client:
            await client.ws.send_message(at_limit)
            await expect(client, {"type": "pong"})
            await client.ws.send_message("x" * (limit + 1))
            assert await read_until_closed(client) == ([], 1009)


async def test_a_flood_gets_rate_limited_then_closed_1008(nursery):
    running = await start_server(
        nursery, make_config(ws_message_rate=10, ws_message_burst=20, ws_idle_timeout=86_400.0)
    )

    async def flood(client: SignalClient) -> None:
        for _ in range(300):
            try:
                await client.send({"type": "ping"})
            except trio_websocket.ConnectionClosed:
                return

    with trio.fail_after(20):
        async with open_socket(running.url) as client, trio.open_nursery() as flooding:
            flooding.start_soon(flood, client)
            frames, close_code = await read_until_closed(client)
    assert close_code == 1008
    assert frames[0] == {"type": "pong"}  # a rate limit, not a ban
    refusals = [frame for frame in frames if frame != {"type": "pong"}]
    assert refusals
    assert all(frame == error("rate_limited", refusals[0]["message"]) for frame in refusals)
    assert len(frames) < 300
    running.stop.set()


async def test_invalid_utf8_in_a_text_frame_closes_1007(zajel_serve):
    """A text frame must be UTF-8 (RFC 6455 §8.1): one that is not ends the connection with
    close code 1007, not a silent hang-up."""
    with trio.fail_after(10):
        client = await RawClient.connect(port_of(zajel_serve.url))
        masked = client.ws.send(TextMessage(data='{"type":"ping","x":"ok"}'))
        # The same frame with its payload's "ok" replaced by two bytes that are not UTF-8.
        header, mask, payload = masked[:2], masked[2:6], bytearray(masked[6:])
        at = len('{"type":"ping","x":"')  # the offset of "ok" in the payload
        for offset, byte in enumerate(b"\xff\xfe"):
            payload[at + offset] = byte ^ mask[(at + offset) % 4]
        await client.stream.send_all(header + mask + bytes(payload))
        frames, close_code = await client.read_until_closed()
        await client.hang_up()
    assert (frames, close_code) == ([], 1007)
