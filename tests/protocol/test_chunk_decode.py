"""Decoding of the chunk messages of ``/relay`` (docs/protocol/chunks.md, "Client → server"):
entries, channel ids, and the payload limit measured on compact UTF-8 JSON."""

from __future__ import annotations

import json

import attrs
import pytest

from zajel.protocol.errors import ProtocolError
from zajel.protocol.frames import Invalid
from zajel.protocol.relay import ChunkAnnounce, ChunkPush, ChunkRequest, Limits, decode

LIMIT = 65_536


def frame(**fields) -> str:
    return json.dumps(fields)


def payload_of_size(size: int, char: str = "a") -> str:
    """A JSON string whose compact UTF-8 encoding (with its quotes) is ``size`` bytes."""
    width = len(char.encode())
    assert (size - 2) % width == 0
    return char * ((size - 2) // width)


def test_announce_keeps_valid_entries_and_skips_invalid_ones():
    message = decode(
        frame(
            type="chunk_announce",
            channelId="chan",
            chunks=[
                {"chunkId": "c1", "routingHash": "h1"},
                {"chunkId": "", "routingHash": "h"},
                {"chunkId": 5, "routingHash": "h"},
                {"chunkId": "c2"},
                "not an object",
                {"chunkId": "c" * 256, "routingHash": "h" * 256},
                {"chunkId": "c" * 257, "routingHash": "h"},
            ],
        )
    )
    assert message == ChunkAnnounce(None, (("c1", "h1"), ("c" * 256, "h" * 256)), "chan")


@pytest.mark.parametrize(
    "chunks", [None, [], "c1", {"chunkId": "c"}, [{"chunkId": "c", "routingHash": "h"}] * 101]
)
def test_announce_needs_a_list_of_1_to_100_entries(chunks):
    message = decode(frame(type="chunk_announce", chunks=chunks))
    assert isinstance(message, Invalid)
    assert message.error.code == "invalid_field"
    assert "chunks" in message.error.message
    assert message.needs_registration


def test_the_announce_limit_is_a_setting():
    entries = [{"chunkId": f"c{i}", "routingHash": "h"} for i in range(3)]
    assert isinstance(decode(frame(type="chunk_announce", chunks=entries)), ChunkAnnounce)
    limited = decode(frame(type="chunk_announce", chunks=entries), limits=Limits(announce_max=2))
    assert isinstance(limited, Invalid)


def test_request_and_push():
    assert decode(frame(type="chunk_request", chunkId="c1")) == ChunkRequest(None, "c1", None)
    assert decode(frame(type="chunk_request", chunkId="c1", channelId="x", peerId="p")) == (
        ChunkRequest("p", "c1", "x")
    )
    push = decode(frame(type="chunk_push", chunkId="c1", data={"sealed": [1, 2]}))
    assert isinstance(push, ChunkPush)
    assert (push.chunk_id, push.data_json) == ("c1", b'{"sealed":[1,2]}')


def test_push_keeps_the_compact_utf8_text_of_data_not_the_decoded_value():
    # Spaced and escaped as sent; kept compact, with raw UTF-8 (what the size limit measures).
    sent = r'{"type":"chunk_push","chunkId":"c","data":[ [], {"k" : "\u00e9\u20ac"} ]}'
    push = decode(sent)
    assert isinstance(push, ChunkPush)
    assert push.data_json == '[[],{"k":"é€"}]'.encode()
    assert not any(isinstance(value, list | dict) for value in attrs.astuple(push, recurse=False))


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "chunk_request"},
        {"type": "chunk_request", "chunkId": ""},
        {"type": "chunk_request", "chunkId": 7},
        {"type": "chunk_request", "chunkId": "c" * 257},
        {"type": "chunk_request", "chunkId": "c", "channelId": 3},
        {"type": "chunk_request", "chunkId": "c", "channelId": ""},
        {"type": "chunk_push", "chunkId": "c"},
        {"type": "chunk_push", "chunkId": "c", "data": None},
        {"type": "chunk_push", "data": "x"},
        {"type": "chunk_announce", "chunks": [{"chunkId": "c", "routingHash": "h"}], "peerId": 1},
    ],
)
def test_bad_chunk_fields_are_invalid_field(fields):
    message = decode(json.dumps(fields))
    assert isinstance(message, Invalid)
    assert message.error.code == "invalid_field"
    assert message.needs_registration


@pytest.mark.parametrize("char", ["a", "é", "€"])  # 1, 2 and 3 bytes in UTF-8
def test_exactly_65536_bytes_is_accepted_and_65537_refused_counted_in_utf8(char):
    for size, accepted in ((LIMIT, True), (LIMIT + 1, False)):
        width = len(char.encode())
        body = char * ((size - 2) // width)
        body += "a" * (size - 2 - len(body.encode()))  # pad to the exact byte count
        message = decode(frame(type="chunk_push", chunkId="c", data=body))
        if accepted:
            assert isinstance(message, ChunkPush)
        else:
            assert isinstance(message, Invalid)
            assert message.error == ProtocolError(
                "chunk_too_large",
                f"Chunk payload too large: {LIMIT + 1} bytes exceeds 65536 byte limit",
            )


def test_the_size_counts_compact_json_not_the_frame_as_sent():
    # Spaces in the frame do not count; the compact form of the value does.
    data = {"k": payload_of_size(LIMIT - 6)}  # {"k":"…"} is exactly LIMIT bytes compact
    spaced = json.dumps({"type": "chunk_push", "chunkId": "c", "data": data}, indent=4)
    assert isinstance(decode(spaced), ChunkPush)


def test_the_chunk_limit_is_a_setting():
    message = decode(
        frame(type="chunk_push", chunkId="c", data="x" * 100), limits=Limits(chunk_max_bytes=50)
    )
    assert isinstance(message, Invalid)
    assert message.error.code == "chunk_too_large"
