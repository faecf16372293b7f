"""Bad input on ``/relay`` over real sockets: every message and field with wrong types, ``null``
where a value is required, strings where lists belong, oversize lists and strings, counts out of
range. Each gets a clear error, nothing crashes, and the same connection works afterwards."""

from __future__ import annotations

import pytest
import trio

from tests.conftest import ALL_DEPLOYMENTS, deployments
from tests.integration._signal import expect, open_socket
from zajel.client import RelayClient

# Every test here runs on zajel serve's two WebSocket transports and on the plain ASGI app.
server = deployments(ALL_DEPLOYMENTS)

LONG_ID = "p" * 129
POINTS_51 = [f"point-{index}" for index in range(51)]


# (frame, expected error code) sent on a REGISTERED connection.
REGISTERED = {
    # update_load
    "load: count missing": ({"type": "update_load"}, "invalid_field"),
    "load: count null": ({"type": "update_load", "connectedCount": None}, "invalid_field"),
    "load: count string": ({"type": "update_load", "connectedCount": "3"}, "invalid_field"),
    "load: count float": ({"type": "update_load", "connectedCount": 1.5}, "invalid_field"),
    "load: count bool": ({"type": "update_load", "connectedCount": True}, "invalid_field"),
    "load: count negative": ({"type": "update_load", "connectedCount": -1}, "invalid_field"),
    "load: count list": ({"type": "update_load", "connectedCount": [1]}, "invalid_field"),
    "load: peerId number": (
        {"type": "update_load", "connectedCount": 1, "peerId": 7},
        "invalid_field",
    ),
    # get_relays
    "relays: count 0": ({"type": "get_relays", "count": 0}, "invalid_field"),
    "relays: count 51": ({"type": "get_relays", "count": 51}, "invalid_field"),
    "relays: count string": ({"type": "get_relays", "count": "10"}, "invalid_field"),
    "relays: count object": ({"type": "get_relays", "count": {}}, "invalid_field"),
    "relays: peerId bad": ({"type": "get_relays", "peerId": "a b"}, "invalid_field"),
    # heartbeat
    "heartbeat: peerId too long": ({"type": "heartbeat", "peerId": LONG_ID}, "invalid_field"),
    "heartbeat: peerId list": ({"type": "heartbeat", "peerId": ["x"]}, "invalid_field"),
    # register_rendezvous
    "rdv: points string": (
        {"type": "register_rendezvous", "dailyPoints": "p"},
        "invalid_field",
    ),
    "rdv: points object": (
        {"type": "register_rendezvous", "dailyPoints": {"p": 1}},
        "invalid_field",
    ),
    "rdv: point number": ({"type": "register_rendezvous", "dailyPoints": [1]}, "invalid_field"),
    "rdv: point null": ({"type": "register_rendezvous", "dailyPoints": [None]}, "invalid_field"),
    "rdv: point empty": ({"type": "register_rendezvous", "dailyPoints": [""]}, "invalid_field"),
    "rdv: point too long": (
        {"type": "register_rendezvous", "dailyPoints": ["x" * 129]},
        "invalid_field",
    ),
    "rdv: 51 points": (
        {"type": "register_rendezvous", "dailyPoints": POINTS_51},
        "invalid_field",
    ),
    "rdv: snake points string": (
        {"type": "register_rendezvous", "daily_points": "p"},
        "invalid_field",
    ),
    "rdv: tokens string": (
        {"type": "register_rendezvous", "hourlyTokens": "t"},
        "invalid_field",
    ),
    "rdv: 51 tokens": (
        {"type": "register_rendezvous", "hourlyTokens": POINTS_51},
        "invalid_field",
    ),
    "rdv: token number": ({"type": "register_rendezvous", "hourly_tokens": [3]}, "invalid_field"),
    "rdv: deadDrop number": (
        {"type": "register_rendezvous", "dailyPoints": ["p"], "deadDrop": 5},
        "invalid_field",
    ),
    "rdv: deadDrop too long": (
        {"type": "register_rendezvous", "dailyPoints": ["p"], "deadDrop": "d" * 4097},
        "invalid_field",
    ),
    "rdv: dead_drops list": (
        {"type": "register_rendezvous", "dailyPoints": ["p"], "dead_drops": ["d"]},
        "invalid_field",
    ),
    "rdv: dead_drops value number": (
        {"type": "register_rendezvous", "dailyPoints": ["p"], "dead_drops": {"p": 1}},
        "invalid_field",
    ),
    "rdv: relayId number": (
        {"type": "register_rendezvous", "hourlyTokens": ["t"], "relayId": 9},
        "invalid_field",
    ),
    "rdv: relayId empty": (
        {"type": "register_rendezvous", "hourlyTokens": ["t"], "relayId": ""},
        "invalid_field",
    ),
    # frames
    "unknown type": ({"type": "teleport"}, "unknown_type"),
    "request: chunkId missing": ({"type": "chunk_request"}, "invalid_field"),
    "request: chunkId number": ({"type": "chunk_request", "chunkId": 1}, "invalid_field"),
    "request: chunkId too long": (
        {"type": "chunk_request", "chunkId": "c" * 257},
        "invalid_field",
    ),
    "request: channelId list": (
        {"type": "chunk_request", "chunkId": "c", "channelId": ["x"]},
        "invalid_field",
    ),
    "announce: chunks missing": ({"type": "chunk_announce"}, "invalid_field"),
    "announce: chunks empty": ({"type": "chunk_announce", "chunks": []}, "invalid_field"),
    "announce: chunks string": ({"type": "chunk_announce", "chunks": "c"}, "invalid_field"),
    "announce: 101 chunks": (
        {"type": "chunk_announce", "chunks": [{"chunkId": "c", "routingHash": "h"}] * 101},
        "invalid_field",
    ),
    "push: data missing": ({"type": "chunk_push", "chunkId": "c"}, "invalid_field"),
    "push: data null": ({"type": "chunk_push", "chunkId": "c", "data": None}, "invalid_field"),
    "push: too large": (
        {"type": "chunk_push", "chunkId": "c", "data": "x" * 65_535},
        "chunk_too_large",
    ),
    "push: not a source": ({"type": "chunk_push", "chunkId": "c", "data": "x"}, "not_a_source"),
}

# (frame, expected error code) sent on an UNREGISTERED connection.
UNREGISTERED = {
    "register: peerId missing": ({"type": "register"}, "invalid_field"),
    "register: peerId null": ({"type": "register", "peerId": None}, "invalid_field"),
    "register: peerId number": ({"type": "register", "peerId": 42}, "invalid_field"),
    "register: peerId empty": ({"type": "register", "peerId": ""}, "invalid_field"),
    "register: peerId too long": ({"type": "register", "peerId": LONG_ID}, "invalid_field"),
    "register: peerId with space": ({"type": "register", "peerId": "a b"}, "invalid_field"),
    "register: peerId with dot": ({"type": "register", "peerId": "a.b"}, "invalid_field"),
    "register: max 0": ({"type": "register", "peerId": "x", "maxConnections": 0}, "invalid_field"),
    "register: max 1001": (
        {"type": "register", "peerId": "x", "maxConnections": 1001},
        "invalid_field",
    ),
    "register: max string": (
        {"type": "register", "peerId": "x", "maxConnections": "20"},
        "invalid_field",
    ),
    "register: key number": ({"type": "register", "peerId": "x", "publicKey": 1}, "invalid_field"),
    "register: key too long": (
        {"type": "register", "peerId": "x", "publicKey": "k" * 1025},
        "invalid_field",
    ),
    "load before register": ({"type": "update_load", "connectedCount": 1}, "not_registered"),
    "bad load before register": ({"type": "update_load"}, "not_registered"),
    "rendezvous before register": (
        {"type": "register_rendezvous", "dailyPoints": "p"},
        "not_registered",
    ),
    "relays before register": ({"type": "get_relays"}, "not_registered"),
    "heartbeat before register": ({"type": "heartbeat"}, "not_registered"),
}


@pytest.mark.parametrize(("frame", "code"), REGISTERED.values(), ids=REGISTERED.keys())
async def test_bad_input_on_a_registered_connection(server, frame, code):
    with trio.fail_after(10):
        async with open_socket(server.url, "/relay", client_class=RelayClient) as client:
            await client.register("tester")
            await client.send(frame)
            reply = await client.receive()
            assert reply["type"] == "error"
            assert reply["code"] == code
            assert isinstance(reply["message"], str)
            assert reply["message"]
            # The connection still works, and its registration is intact.
            await client.ping()
            assert await client.update_load(1) == {
                "type": "load_updated",
                "peerId": "tester",
                "connectedCount": 1,
            }


@pytest.mark.parametrize(("frame", "code"), UNREGISTERED.values(), ids=UNREGISTERED.keys())
async def test_bad_input_on_an_unregistered_connection(server, frame, code):
    with trio.fail_after(10):
        async with open_socket(server.url, "/relay", client_class=RelayClient) as client:
            await client.send(frame)
            reply = await client.receive()
            assert (reply["type"], reply["code"]) == ("error", code)
            await client.ping()
            await client.register("tester")


@pytest.mark.parametrize(
    "raw", [b"\x00binary", "not json", "[1,2]", "null", '{"peerId":"x"}', '{"type":7}']
)
async def test_bad_frames_on_relay(server, raw):
    with trio.fail_after(10):
        async with open_socket(server.url, "/relay", client_class=RelayClient) as client:
            await client.ws.send_message(raw)
            await expect(
                client,
                {"type": "error", "code": "invalid_message", "message": "Invalid message format"},
            )
            await client.register("tester")


async def test_null_optional_fields_count_as_absent(server):
    with trio.fail_after(10):
        async with open_socket(server.url, "/relay", client_class=RelayClient) as client:
            await client.send(
                {"type": "register", "peerId": "tester", "maxConnections": None, "publicKey": None}
            )
            await client.expect("registered")
            await client.send({"type": "get_relays", "count": None, "peerId": None})
            await client.expect("relays")
            await client.send(
                {
                    "type": "register_rendezvous",
                    "dailyPoints": None,
                    "hourlyTokens": None,
                    "deadDrop": None,
                    "relayId": None,
                }
            )
            await expect(client, {"type": "rendezvous_result", "liveMatches": [], "deadDrops": []})
