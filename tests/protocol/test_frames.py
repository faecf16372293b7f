"""Frames (docs/protocol/conventions.md, "Frames"): strict decoding, compact encoding, payload
sizes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings

from tests.strategies import frames, json_objects
from zajel.protocol import errors
from zajel.protocol.errors import ProtocolError
from zajel.protocol.frames import decode_object, encode, error_frame, utf8_json_size

INVALID_MESSAGE = ProtocolError("invalid_message", "Invalid message format")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"type":"ping"}', {"type": "ping"}),
        ('  {"type": "x", "a": [1, 2.5, null, true]}\n', {"type": "x", "a": [1, 2.5, None, True]}),
        ('{"type":"","extra":{"nested":{}}}', {"type": "", "extra": {"nested": {}}}),
        ('{"type":"\\u00e9t\\u00e9"}', {"type": "été"}),
        ('{"type":"x","n":' + "9" * 4000 + "}", {"type": "x", "n": int("9" * 4000)}),
    ],
)
def test_decode_object_accepts_objects_with_a_string_type(data, expected):
    assert decode_object(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"type":"ping"}', id="binary frame"),
        pytest.param(bytearray(b'{"type":"ping"}'), id="bytearray"),
        pytest.param("", id="empty"),
        pytest.param("not json", id="text"),
        pytest.param('{"type":"ping"', id="truncated"),
        pytest.param('{"type":"ping"} {}', id="two values"),
        pytest.param('[{"type":"ping"}]', id="array"),
        pytest.param('"ping"', id="string"),
        pytest.param("42", id="number"),
        pytest.param("null", id="null"),
        pytest.param("{}", id="no type"),
        pytest.param('{"Type":"ping"}', id="type misspelt"),
        pytest.param('{"type":null}', id="null type"),
        pytest.param('{"type":1}', id="number type"),
        pytest.param('{"type":["ping"]}', id="array type"),
        pytest.param('{"type":{"t":"ping"}}', id="object type"),
        pytest.param('{"type":true}', id="boolean type"),
        pytest.param('{"type":"x","n":NaN}', id="NaN"),
        pytest.param('{"type":"x","n":Infinity}', id="Infinity"),
        pytest.param('{"type":"x","n":-Infinity}', id="-Infinity"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deep array nesting"),
        pytest.param('{"a":' * 100_000 + "1" + "}" * 100_000, id="deep object nesting"),
        pytest.param('{"type":"x","n":' + "1" * 5000 + "}", id="huge integer"),
        pytest.param('{"type":"x","n":-' + "7" * 100_000 + "}", id="huger integer"),
    ],
)
def test_decode_object_rejects_everything_else_as_invalid_message(data):
    with pytest.raises(ProtocolError) as caught:
        decode_object(data)
    assert caught.value == INVALID_MESSAGE
    assert caught.value.code == errors.INVALID_MESSAGE
    assert caught.value.to_frame() == {
        "type": "error",
        "code": "invalid_message",
        "message": "Invalid message format",
    }


def test_encode_is_compact():
    assert encode({"type": "pong"}) == '{"type":"pong"}'
    assert encode({"a": [1, 2], "b": {"c": None}}) == '{"a":[1,2],"b":{"c":null}}'


def test_encode_writes_non_ascii_as_raw_utf8():
    decoded = decode_object('{"type":"x","t":"\\ud83d\\ude00-é-😀"}')
    assert decoded["t"] == "😀-é-😀"  # an escaped surrogate pair is one character
    text = encode(decoded)
    assert text == '{"type":"x","t":"😀-é-😀"}'
    assert len(text.encode("utf-8")) == len('{"type":"x","t":"-é-"}'.encode()) + 8


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"x","s":"\\ud800"}',
        '{"type":"x","s":"a\\udfff"}',
        '{"type":"x","s":"\\ude00\\ud83d"}',  # a pair in the wrong order is two lone halves
        '{"type":"x","\\udc00":1}',  # keys too
        '{"type":"x","s":["\\ud800"]}',
    ],
)
def test_a_lone_surrogate_escape_is_not_a_valid_frame(text):
    # It could never be sent on as UTF-8 (docs/protocol/conventions.md, "Encoding").
    with pytest.raises(ProtocolError) as refused:
        decode_object(text)
    assert refused.value.code == "invalid_message"


def test_an_escaped_backslash_before_u_is_not_a_surrogate():
    assert decode_object('{"type":"x","s":"\\\\ud800"}')["s"] == "\\ud800"


def test_error_frame_is_the_encoded_error():
    frame = error_frame(errors.unknown_type("bogus"))
    assert json.loads(frame) == {
        "type": "error",
        "code": "unknown_type",
        "message": "Unknown message type: bogus",
    }


def test_unknown_type_echo_is_cut_short():
    error = errors.unknown_type("x" * 10_000)
    assert error.message == "Unknown message type: " + "x" * 64 + "…"


def test_protocol_errors_compare_by_code_and_message():
    assert errors.not_registered() == errors.not_registered()
    assert hash(errors.invalid_field("a")) == hash(errors.invalid_field("a"))
    assert errors.invalid_field("a") != errors.invalid_field("b")
    assert errors.rate_limited() != errors.invalid_field("Rate limit exceeded")
    assert errors.invalid_field("a") != ("invalid_field", "a")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ({}, 2),
        ("", 2),
        ("abc", 5),
        ("é", 4),  # 2 bytes in UTF-8, plus the quotes
        ("€", 5),  # 3 bytes
        ("😀", 6),  # 4 bytes, not a 12-character \\ud83d\\ude00 escape
        ({"k": "日本"}, len('{"k":""}') + 6),
        ([1, None, True], len("[1,null,true]")),
        ("\ud800", 5),  # a lone surrogate still has a size (3 bytes, surrogatepass)
    ],
)
def test_utf8_json_size_counts_raw_utf8_bytes_of_compact_json(value, size):
    assert utf8_json_size(value) == size


@settings(deadline=None, max_examples=150)
@given(frames)
def test_decode_object_never_raises_anything_but_protocol_error(data):
    try:
        obj = decode_object(data)
    except ProtocolError as exc:
        error: ProtocolError | None = exc
    else:
        error = None
        assert isinstance(obj, dict)
        assert isinstance(obj["type"], str)
    assert error is None or error == INVALID_MESSAGE


@settings(deadline=None, max_examples=150)
@given(frames)
def test_encode_of_any_decoded_object_round_trips(data):
    try:
        obj = decode_object(data)
    except ProtocolError:
        return
    text = encode(obj)
    text.encode("utf-8")
    assert json.loads(text) == obj
    assert decode_object(text) == obj


@settings(deadline=None, max_examples=100)
@given(json_objects)
def test_utf8_json_size_is_the_length_of_what_is_sent(value):
    # Sizes are measured on the frame's own encoding (numbers may be written another way than
    # the stdlib writes them: 6.103515625e-05 goes out as 0.00006103515625).
    assert utf8_json_size(value) == len(encode(value).encode("utf-8", "surrogatepass"))
    assert json.loads(encode(value)) == value


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1E999"])
def test_numbers_that_overflow_a_float_are_invalid(number):
    with pytest.raises(ProtocolError) as info:
        decode_object('{"type":"offer","payload":{"n":' + number + "}}")
    assert info.value.code == "invalid_message"


def test_an_integer_beyond_64_bits_is_read_as_a_double_as_the_apps_read_it():
    frame = decode_object('{"type":"x","n":18446744073709551616,"m":-9223372036854775808}')
    assert frame["n"] == 18446744073709551616.0
    assert isinstance(frame["n"], float)
    assert frame["m"] == -9223372036854775808
    assert isinstance(frame["m"], int)


def test_nesting_orjson_will_not_encode_is_encoded_by_the_stdlib():
    deep: object = "leaf"
    for _ in range(400):
        deep = [deep]
    text = encode({"type": "x", "deep": deep})
    assert decode_object(text) == {"type": "x", "deep": deep}
