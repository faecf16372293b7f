"""Decoding of the AttestationRegistry's HTTP bodies, its values and the version policy
(docs/protocol/attestation.md, "Requests")."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import json_objects, json_scalars, json_values
from zajel.protocol import errors
from zajel.protocol.attestation import (
    MAX_BLOCKED_VERSIONS,
    MAX_REGION_BYTES,
    MAX_REGIONS,
    MAX_RESPONSES,
    MAX_SUNSET_DATES,
    BuildClaims,
    Challenge,
    Device,
    Policy,
    PolicyVerdict,
    Reference,
    Region,
    RegisterDevice,
    RequestChallenge,
    UploadReference,
    VerifyChallenge,
    check_policy,
    decode_challenge,
    decode_policy,
    decode_register,
    decode_upload_reference,
    decode_verify,
    is_identifier,
    is_sunset_date,
    is_version,
    parse_build_token_payload,
    parse_version,
    utc_date,
)
from zajel.protocol.errors import ProtocolError

_ABSENT: Any = object()
T = TypeVar("T")

DEVICE_ID = "device-1.a_B"
PAYLOAD = json.dumps(
    {"version": "1.2.3", "platform": "android", "build_hash": "abc123", "timestamp": 1_700_000_000}
)
SIGNATURE = "c2lnbmF0dXJl-_+/="
NONCE = "ab" * 32
HMAC = "cd" * 32

REGISTER_MISSING = "Missing required fields: build_token, device_id"
BAD_DEVICE_ID = "Invalid device_id format"
BAD_TOKEN = "Invalid build_token format: must include payload and signature"
BAD_PAYLOAD = "Invalid build token payload"
PAYLOAD_MISSING = "Build token missing required fields: version, platform, build_hash, timestamp"
UPLOAD_MISSING = "Missing required fields: version, platform, build_hash"
BAD_VERSION_OR_PLATFORM = "Invalid version or platform format"
BAD_BUILD_HASH = "Invalid build_hash"
BAD_SIZE = "Invalid size: must be a non-negative integer"
BAD_REGIONS = "critical_regions must be a non-empty array of { offset, length, data_hex } objects"
TOO_MANY_REGIONS = "Too many critical_regions (at most 256)"
BAD_OFFSET_LENGTH = "Each critical_region must have numeric offset and length"
BAD_DATA_HEX = "Each critical_region must have data_hex of exactly length bytes"
BAD_WEIGHT = "Each critical_region weight must be a positive number"
OUTSIDE_SIZE = "Each critical_region must lie within size"
CHALLENGE_MISSING = "Missing required fields: device_id, build_version"
BAD_BUILD_VERSION = "Invalid build_version format"
VERIFY_MISSING = "Missing required fields: device_id, nonce, responses (array)"
TOO_MANY_RESPONSES = "Too many responses"
BAD_RESPONSE = "Invalid response: expected an object"
BAD_REGION_INDEX = "Invalid region_index: must be an integer"
BAD_HMAC = "Invalid hmac: must be a string"
BAD_MINIMUM = "Invalid minimum_version: expected X.Y.Z"
BAD_RECOMMENDED = "Invalid recommended_version: expected X.Y.Z"
BAD_BLOCKED = "Invalid blocked_versions: expected a list of X.Y.Z versions"
BAD_SUNSET = 'Invalid sunset_dates: expected {"X.Y.Z": "YYYY-MM-DD"}'


def body(**fields: Any) -> bytes:
    """A JSON body; a field given as ``_ABSENT`` is left out."""
    return json.dumps({k: v for k, v in fields.items() if v is not _ABSENT}).encode()


def with_fields(base: dict[str, Any], **fields: Any) -> bytes:
    """``base`` with ``fields`` replaced (``_ABSENT`` removes one), as a JSON body."""
    return body(**{**base, **fields})


def error_of(decode: Callable[[bytes], object], data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    return info.value


def invalid(message: str) -> ProtocolError:
    return ProtocolError(errors.INVALID_FIELD, message)


ALL_DECODERS = [
    decode_register,
    decode_upload_reference,
    decode_challenge,
    decode_verify,
    decode_policy,
]

# Values that are not strings of any kind, and identifiers that break the rule.
NOT_STRINGS = [5, 1.5, True, False, [], ["a"], {}, {"a": 1}]
BAD_IDENTIFIERS = [
    "d" * 129,
    "has space",
    "a/b",
    "a:b",
    "a+b",
    "a\nb",
    "abc\n",
    "\tabc",
    "é",
    "\uff21",  # full-width A
    "١٢٣",  # Arabic-Indic digits are not 0-9
    5,
    1.5,
    True,
    False,
    [],
    ["a"],
    {},
]

# -- versions and identifiers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.0.0", (1, 0, 0)),
        ("0.0.0", (0, 0, 0)),
        ("10.20.30", (10, 20, 30)),
        ("1.10.0", (1, 10, 0)),
        ("999999999.0.999999999", (999_999_999, 0, 999_999_999)),
    ],
)
def test_a_strict_version_parses_to_its_numbers(text, expected):
    assert parse_version(text) == expected
    assert is_version(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.0",
        "1.0.0.0",
        "01.0.0",
        "1.00.0",
        "1.0.01",
        "1.0.-1",
        "-1.0.0",
        "+1.0.0",
        "1.+0.0",
        "1.0.0-beta",
        "1.0.0+build",
        "v1.0.0",
        " 1.0.0",
        "1.0.0 ",
        "1.2.3\n",
        "\n1.2.3",
        "1..0",
        "1.0.",
        ".1.0",
        "1,0,0",
        "1.0.0a",
        "１.0.0",  # full-width digit one  # noqa: RUF001
        "1.٣.0",  # Arabic-Indic digit three
        "1.0.1234567890",  # 10 digits
        "1234567890.0.0",
        "1.0.0\x00",
        1,
        1.0,
        None,
        True,
        ["1.0.0"],
        {"v": "1.0.0"},
        (1, 0, 0),
    ],
)
def test_anything_but_a_strict_version_is_none(text):
    assert parse_version(text) is None
    assert not is_version(text)


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.9.0", "1.10.0"),
        ("1.0.9", "1.0.10"),
        ("9.9.9", "10.0.0"),
        ("0.0.0", "0.0.1"),
        ("1.99.99", "2.0.0"),
        ("2.0.0", "100000000.0.0"),
    ],
)
def test_versions_compare_numerically(lower, higher):
    assert parse_version(lower) < parse_version(higher)


def test_version_order_is_not_text_order():
    assert "1.10.0" < "1.9.0"
    assert parse_version("1.10.0") > parse_version("1.9.0")


@pytest.mark.parametrize("value", ["a", "A-z_0.9", "d" * 128, "1.0.0", "...", "-", "web"])
def test_valid_identifiers(value):
    assert is_identifier(value)


@pytest.mark.parametrize("value", ["", None, *BAD_IDENTIFIERS])
def test_invalid_identifiers(value):
    assert not is_identifier(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-31", True),
        ("2024-02-29", True),
        ("9999-12-31", True),
        ("0001-01-01", True),
        ("2023-02-29", False),
        ("2025-13-01", False),
        ("2025-00-10", False),
        ("2025-01-32", False),
        ("0000-01-01", False),
        ("20250131", False),
        ("2025-W05-1", False),
        ("2025-1-31", False),
        ("2025-01-31T00:00", False),
        ("2025-01-31 ", False),
        ("2025-01-31\n", False),
        ("２025-01-31", False),  # full-width digit two  # noqa: RUF001
        ("", False),
        (20250131, False),
        (None, False),
    ],
)
def test_sunset_dates_are_real_dates_written_yyyy_mm_dd(value, expected):
    assert is_sunset_date(value) is expected


def test_utc_date_is_the_calendar_day_in_utc():
    assert utc_date(0) == datetime.date(1970, 1, 1)
    assert utc_date(86_400_000 - 1) == datetime.date(1970, 1, 1)
    assert utc_date(86_400_000) == datetime.date(1970, 1, 2)
    assert utc_date(1_735_689_600_000) == datetime.date(2025, 1, 1)


# -- body-level errors -----------------------------------------------------------------------


@pytest.mark.parametrize("decode", ALL_DECODERS)
@pytest.mark.parametrize(
    "data",
    [b"", b"  \n", b"{", b"not json", b"\xff\xfe", b'{"a":NaN}', b'{"a":1e400}', b"[" * 100_000],
)
def test_a_body_that_is_not_json_is_an_invalid_body(decode, data):
    assert error_of(decode, data).code == errors.INVALID_BODY


@pytest.mark.parametrize("decode", ALL_DECODERS)
@pytest.mark.parametrize("data", [b"[]", b"null", b'"text"', b"5", b"true"])
def test_a_body_that_is_not_an_object_is_an_invalid_body(decode, data):
    assert error_of(decode, data) == ProtocolError(
        errors.INVALID_BODY, "Request body must be a JSON object"
    )


# -- POST /attest/register -------------------------------------------------------------------

REGISTER = {"build_token": {"payload": PAYLOAD, "signature": SIGNATURE}, "device_id": DEVICE_ID}


def register_body(**fields: Any) -> bytes:
    return with_fields(REGISTER, **fields)


def token_body(**fields: Any) -> bytes:
    token = {"payload": PAYLOAD, "signature": SIGNATURE}
    token.update(fields)
    return register_body(build_token={k: v for k, v in token.items() if v is not _ABSENT})


def test_a_register_body_decodes():
    data = register_body(unknown=[1, 2])
    assert decode_register(data) == RegisterDevice(DEVICE_ID, PAYLOAD, SIGNATURE)


def test_register_keeps_the_payload_text_as_sent():
    payload = ' { "version" : "1.0.0" } '
    assert decode_register(token_body(payload=payload)).payload == payload


@pytest.mark.parametrize(
    "fields",
    [
        {"build_token": _ABSENT},
        {"build_token": None},
        {"device_id": _ABSENT},
        {"device_id": None},
        {"device_id": ""},
        {"build_token": None, "device_id": "bad id"},
        {"build_token": _ABSENT, "device_id": _ABSENT},
    ],
)
def test_a_missing_register_field_is_named_in_one_message(fields):
    assert error_of(decode_register, register_body(**fields)) == invalid(REGISTER_MISSING)


@pytest.mark.parametrize("device_id", BAD_IDENTIFIERS)
def test_a_bad_device_id_is_refused_on_register(device_id):
    assert error_of(decode_register, register_body(device_id=device_id)) == invalid(BAD_DEVICE_ID)


def test_the_device_id_is_checked_before_the_token():
    data = register_body(device_id="bad id", build_token="nope")
    assert error_of(decode_register, data) == invalid(BAD_DEVICE_ID)


@pytest.mark.parametrize(
    "data",
    [
        register_body(build_token=""),
        register_body(build_token="token"),
        register_body(build_token=[PAYLOAD, SIGNATURE]),
        register_body(build_token=5),
        register_body(build_token=False),
        register_body(build_token={}),
        token_body(payload=_ABSENT),
        token_body(payload=None),
        token_body(payload=""),
        token_body(payload={"version": "1.0.0"}),
        token_body(payload=5),
        token_body(payload="p" * 4097),
        token_body(signature=_ABSENT),
        token_body(signature=None),
        token_body(signature=""),
        token_body(signature=5),
        token_body(signature=["s"]),
        token_body(signature="s" * 201),
        token_body(signature="sïgnature"),
    ],
)
def test_a_malformed_build_token_is_refused(data):
    assert error_of(decode_register, data) == invalid(BAD_TOKEN)


def test_build_token_length_bounds_are_inclusive():
    decoded = decode_register(token_body(payload="p" * 4096, signature="s" * 200))
    assert decoded == RegisterDevice(DEVICE_ID, "p" * 4096, "s" * 200)


def test_a_non_ascii_payload_is_kept():
    payload = json.dumps({"note": "é 😀"}, ensure_ascii=False)
    assert decode_register(token_body(payload=payload)).payload == payload


# -- the build token's payload ---------------------------------------------------------------

CLAIMS = {"version": "1.2.3", "platform": "android", "build_hash": "abc123", "timestamp": 17}


def claims_text(**fields: Any) -> str:
    return json.dumps({k: v for k, v in {**CLAIMS, **fields}.items() if v is not _ABSENT})


def payload_error(payload: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_build_token_payload(payload)
    return info.value


def test_a_payload_parses_to_its_claims():
    assert parse_build_token_payload(PAYLOAD) == BuildClaims(
        "1.2.3", "android", "abc123", 1_700_000_000
    )
    text = claims_text(platform="web", build_hash="h" * 256, timestamp=0, extra={"x": 1})
    assert parse_build_token_payload(text) == BuildClaims("1.2.3", "web", "h" * 256, 0)
    assert parse_build_token_payload(claims_text(timestamp=-5)).timestamp == -5


@pytest.mark.parametrize(
    "payload",
    [
        "",
        " ",
        "{",
        "not json",
        "[]",
        '["1.0.0"]',
        "null",
        "5",
        '"text"',
        '{"version":NaN}',
        '{"timestamp":Infinity}',
        '{"timestamp":1e400}',
        "[" * 100_000,
        '{"a":"\ud800"}',  # a raw lone surrogate: text that is not UTF-8
    ],
)
def test_a_payload_that_is_not_a_json_object_is_invalid(payload):
    assert payload_error(payload) == invalid(BAD_PAYLOAD)


@pytest.mark.parametrize("field", ["version", "platform", "build_hash", "timestamp"])
@pytest.mark.parametrize("missing", [_ABSENT, None, ""])
def test_a_missing_claim_is_named_in_one_message(field, missing):
    assert payload_error(claims_text(**{field: missing})) == invalid(PAYLOAD_MISSING)


def test_a_missing_claim_is_reported_before_malformed_ones():
    text = claims_text(version="bad", platform=None, timestamp="x")
    assert payload_error(text) == invalid(PAYLOAD_MISSING)


@pytest.mark.parametrize(
    "fields",
    [
        {"version": "1.0"},
        {"version": "1.0.0-beta"},
        {"version": "01.0.0"},
        {"version": 1},
        {"version": ["1.0.0"]},
        *({"platform": platform} for platform in BAD_IDENTIFIERS),
        {"build_hash": "h" * 257},
        {"build_hash": 5},
        {"build_hash": ["h"]},
        {"build_hash": {}},
        {"timestamp": 1.5},
        {"timestamp": 1.0},
        {"timestamp": 1e3},
        {"timestamp": True},
        {"timestamp": False},
        {"timestamp": "1700000000"},
        {"timestamp": [1]},
    ],
)
def test_a_malformed_claim_is_invalid(fields):
    assert payload_error(claims_text(**fields)) == invalid(BAD_PAYLOAD)


# -- POST /attest/upload-reference -----------------------------------------------------------

UPLOAD = {
    "version": "2.0.1",
    "platform": "linux",
    "build_hash": "sha256:0011",
    "critical_regions": [
        {"offset": 0, "length": 2, "data_hex": "abcd"},
        {"offset": 2, "length": 2, "data_hex": "ef01"},
        {"offset": 4, "length": 2, "data_hex": "2345"},
    ],
}
# Two more regions for bodies built around one region under test.
OTHERS = [
    {"offset": 100, "length": 1, "data_hex": "aa"},
    {"offset": 101, "length": 1, "data_hex": "bb"},
]


def upload_body(**fields: Any) -> bytes:
    return with_fields(UPLOAD, **fields)


def region(**fields: Any) -> dict[str, Any]:
    item = {"offset": 0, "length": 2, "data_hex": "abcd"}
    item.update(fields)
    return {k: v for k, v in item.items() if v is not _ABSENT}


def regions_body(*items: Any, **fields: Any) -> bytes:
    return upload_body(critical_regions=list(items), **fields)


def upload_error(data: bytes) -> ProtocolError:
    return error_of(decode_upload_reference, data)


def test_a_minimal_upload_decodes_with_size_and_weight_defaults():
    assert decode_upload_reference(upload_body()) == UploadReference(
        "2.0.1",
        "linux",
        "sha256:0011",
        0,
        (Region(0, 2, "abcd", 1.0), Region(2, 2, "ef01", 1.0), Region(4, 2, "2345", 1.0)),
    )


@pytest.mark.parametrize("count", [1, 2])
def test_a_reference_of_one_or_two_regions_is_accepted(count):
    # docs/protocol/attestation.md, "POST /attest/upload-reference": any reference of at least one
    # region is accepted, as the original accepted it; a challenge then asks for all of them.
    items = [region(offset=i, length=1, data_hex=f"{i:02x}") for i in range(count)]
    decoded = decode_upload_reference(regions_body(*items))
    assert decoded.regions == tuple(Region(i, 1, f"{i:02x}", 1.0) for i in range(count))


def test_a_full_upload_decodes_every_field():
    data = regions_body(
        region(offset=10, length=3, data_hex="ABcDeF", weight=2.5),
        region(offset=0, length=1, data_hex="0F", weight=7),
        region(offset=97, length=3, data_hex="000000", weight=None),
        size=100,
        extra="ignored",
    )
    decoded = decode_upload_reference(data)
    assert decoded == UploadReference(
        "2.0.1",
        "linux",
        "sha256:0011",
        100,
        (
            Region(10, 3, "abcdef", 2.5),
            Region(0, 1, "0f", 7.0),
            Region(97, 3, "000000", 1.0),
        ),
    )
    assert all(type(item.weight) is float for item in decoded.regions)
    assert decoded.regions[0].data == b"\xab\xcd\xef"


def test_upload_bounds_are_inclusive():
    items = [region(offset=i, length=1, data_hex="00") for i in range(MAX_REGIONS)]
    assert len(decode_upload_reference(regions_body(*items)).regions) == MAX_REGIONS
    long = region(length=MAX_REGION_BYTES, data_hex="ff" * MAX_REGION_BYTES, weight=1_000_000)
    decoded = decode_upload_reference(regions_body(long, *OTHERS))
    assert decoded.regions[0] == Region(0, MAX_REGION_BYTES, "ff" * MAX_REGION_BYTES, 1e6)
    assert decode_upload_reference(upload_body(size=2**53 - 1)).size == 2**53 - 1
    big = region(offset=2**53 - 1, length=1, data_hex="00", weight=1e-300)
    assert decode_upload_reference(regions_body(big, *OTHERS)).regions[0].weight == 1e-300


@pytest.mark.parametrize("field", ["version", "platform", "build_hash"])
@pytest.mark.parametrize("missing", [_ABSENT, None, ""])
def test_a_missing_upload_field_is_named_in_one_message(field, missing):
    assert upload_error(upload_body(**{field: missing})) == invalid(UPLOAD_MISSING)


@pytest.mark.parametrize(
    "fields",
    [
        {"version": "1.0"},
        {"version": "v1.0.0"},
        {"version": 1},
        {"version": ["1.0.0"]},
        *({"platform": platform} for platform in BAD_IDENTIFIERS),
    ],
)
def test_an_upload_with_a_bad_version_or_platform_is_refused(fields):
    assert upload_error(upload_body(**fields)) == invalid(BAD_VERSION_OR_PLATFORM)


@pytest.mark.parametrize("build_hash", ["h" * 257, 5, True, ["h"], {}])
def test_an_upload_with_a_bad_build_hash_is_refused(build_hash):
    assert upload_error(upload_body(build_hash=build_hash)) == invalid(BAD_BUILD_HASH)


def test_a_build_hash_of_256_characters_is_accepted():
    assert decode_upload_reference(upload_body(build_hash="h" * 256)).build_hash == "h" * 256


@pytest.mark.parametrize("size", [-1, 1.0, 1.5, True, False, "10", [], {}, 2**53])
def test_an_upload_with_a_bad_size_is_refused(size):
    assert upload_error(upload_body(size=size)) == invalid(BAD_SIZE)


@pytest.mark.parametrize(
    "critical_regions", [_ABSENT, None, [], {}, "", "regions", 5, {"0": region()}]
)
def test_critical_regions_must_be_a_non_empty_array(critical_regions):
    assert upload_error(upload_body(critical_regions=critical_regions)) == invalid(BAD_REGIONS)


def test_too_many_critical_regions_are_refused():
    items = [region(offset=i, length=1, data_hex="00") for i in range(MAX_REGIONS + 1)]
    assert upload_error(regions_body(*items)) == invalid(TOO_MANY_REGIONS)


@pytest.mark.parametrize(
    "item",
    [
        None,
        5,
        "region",
        [0, 2, "abcd"],
        region(offset=_ABSENT),
        region(offset=None),
        region(offset=-1),
        region(offset=1.0),
        region(offset=0.5),
        region(offset=True),
        region(offset="0"),
        region(offset=2**53),
        region(length=_ABSENT),
        region(length=None),
        region(length=0, data_hex=""),
        region(length=-2),
        region(length=2.0),
        region(length=False),
        region(length="2"),
        region(length=MAX_REGION_BYTES + 1, data_hex="00" * (MAX_REGION_BYTES + 1)),
    ],
)
def test_each_region_needs_integer_offset_and_length(item):
    assert upload_error(regions_body(item)) == invalid(BAD_OFFSET_LENGTH)


@pytest.mark.parametrize(
    "item",
    [
        region(data_hex=_ABSENT),
        region(data_hex=None),
        region(data_hex=""),
        region(data_hex="abc"),
        region(data_hex="abcdef"),
        region(data_hex="abcg"),
        region(data_hex="ab c"),
        region(data_hex=" abc"),
        region(data_hex="0x12"),
        region(data_hex="ａｂｃｄ"),  # noqa: RUF001
        region(data_hex=0xABCD),
        region(data_hex=["ab", "cd"]),
    ],
)
def test_each_region_needs_data_hex_of_exactly_length_bytes(item):
    assert upload_error(regions_body(item)) == invalid(BAD_DATA_HEX)


@pytest.mark.parametrize(
    "weight", [0, 0.0, -0.0, -1, -0.5, 1_000_001, 1e6 + 1, 10**400, True, False, "1", [1], {}]
)
def test_each_region_weight_must_be_a_positive_number(weight):
    assert upload_error(regions_body(region(weight=weight))) == invalid(BAD_WEIGHT)


@pytest.mark.parametrize(
    ("offset", "length", "size"), [(99, 2, 100), (100, 1, 100), (0, 3, 2), (2**53 - 1, 1, 1)]
)
def test_each_region_must_lie_within_a_given_size(offset, length, size):
    data = regions_body(region(offset=offset, length=length, data_hex="00" * length), size=size)
    assert upload_error(data) == invalid(OUTSIDE_SIZE)


def test_region_checks_run_in_order_and_the_first_bad_region_answers():
    data = regions_body(region(), region(offset=-1, data_hex="zz", weight=0), size=1)
    # The first region is already outside size 1 and answers before the second one.
    assert upload_error(data) == invalid(OUTSIDE_SIZE)
    data = regions_body(region(offset=-1, data_hex="zz", weight=0))
    assert upload_error(data) == invalid(BAD_OFFSET_LENGTH)
    data = regions_body(region(data_hex="zz", weight=0))
    assert upload_error(data) == invalid(BAD_DATA_HEX)
    data = regions_body(region(weight=0), size=1)
    assert upload_error(data) == invalid(BAD_WEIGHT)


def test_upload_checks_run_in_the_contract_order():
    assert upload_error(body(version="bad", platform="bad id")) == invalid(UPLOAD_MISSING)
    data = upload_body(version="bad", build_hash=5, size=-1, critical_regions=None)
    assert upload_error(data) == invalid(BAD_VERSION_OR_PLATFORM)
    data = upload_body(build_hash=5, size=-1, critical_regions=None)
    assert upload_error(data) == invalid(BAD_BUILD_HASH)
    assert upload_error(upload_body(size=-1, critical_regions=None)) == invalid(BAD_SIZE)


# -- POST /attest/challenge ------------------------------------------------------------------

CHALLENGE = {"device_id": DEVICE_ID, "build_version": "1.2.3"}


def challenge_body(**fields: Any) -> bytes:
    return with_fields(CHALLENGE, **fields)


def test_a_challenge_body_decodes():
    data = challenge_body(extra=1)
    assert decode_challenge(data) == RequestChallenge(DEVICE_ID, "1.2.3")


@pytest.mark.parametrize("field", ["device_id", "build_version"])
@pytest.mark.parametrize("missing", [_ABSENT, None, ""])
def test_a_missing_challenge_field_is_named_in_one_message(field, missing):
    data = challenge_body(**{field: missing})
    assert error_of(decode_challenge, data) == invalid(CHALLENGE_MISSING)


@pytest.mark.parametrize("device_id", BAD_IDENTIFIERS)
def test_a_bad_device_id_is_refused_on_challenge(device_id):
    data = challenge_body(device_id=device_id, build_version="bad")
    assert error_of(decode_challenge, data) == invalid(BAD_DEVICE_ID)


@pytest.mark.parametrize(
    "build_version", ["1.0", "1.0.0.0", "01.0.0", "1.0.0-beta", " 1.0.0", 1, 1.0, True, ["1.0.0"]]
)
def test_a_bad_build_version_is_refused(build_version):
    data = challenge_body(build_version=build_version)
    assert error_of(decode_challenge, data) == invalid(BAD_BUILD_VERSION)


# -- POST /attest/verify ---------------------------------------------------------------------

VERIFY = {
    "device_id": DEVICE_ID,
    "nonce": NONCE,
    "responses": [{"region_index": 0, "hmac": HMAC}, {"region_index": 2, "hmac": "AB"}],
}


def verify_body(**fields: Any) -> bytes:
    return with_fields(VERIFY, **fields)


def answer(**fields: Any) -> dict[str, Any]:
    item = {"region_index": 0, "hmac": HMAC}
    item.update(fields)
    return {k: v for k, v in item.items() if v is not _ABSENT}


def verify_error(data: bytes) -> ProtocolError:
    return error_of(decode_verify, data)


def test_a_verify_body_decodes_in_the_order_sent():
    assert decode_verify(verify_body(extra=None)) == VerifyChallenge(
        DEVICE_ID, NONCE, ((0, HMAC), (2, "AB"))
    )


def test_verify_leaves_outcomes_to_the_service():
    # Nonce format, index range, repeated indexes, hmac hex and the number of answers are
    # verification outcomes ({"valid": false}), not body errors.
    data = verify_body(
        nonce="not-hex",
        responses=[
            answer(region_index=-1, hmac=""),
            answer(region_index=10**30, hmac="zz"),
            answer(region_index=-1, hmac="h" * 128),
        ],
    )
    assert decode_verify(data) == VerifyChallenge(
        DEVICE_ID, "not-hex", ((-1, ""), (10**30, "zz"), (-1, "h" * 128))
    )
    assert decode_verify(verify_body(responses=[])).responses == ()
    responses = [answer(region_index=i) for i in range(MAX_RESPONSES)]
    assert len(decode_verify(verify_body(responses=responses)).responses) == MAX_RESPONSES


@pytest.mark.parametrize(
    "fields",
    [
        {"device_id": _ABSENT},
        {"device_id": None},
        {"device_id": ""},
        {"nonce": _ABSENT},
        {"nonce": None},
        {"nonce": ""},
        {"responses": _ABSENT},
        {"responses": None},
        {"responses": {}},
        {"responses": "[]"},
        {"responses": 0},
        {"device_id": "bad id", "responses": None},
    ],
)
def test_a_missing_verify_field_is_named_in_one_message(fields):
    assert verify_error(verify_body(**fields)) == invalid(VERIFY_MISSING)


@pytest.mark.parametrize("device_id", BAD_IDENTIFIERS)
def test_a_bad_device_id_is_refused_on_verify(device_id):
    assert verify_error(verify_body(device_id=device_id, nonce=5)) == invalid(BAD_DEVICE_ID)


@pytest.mark.parametrize("nonce", NOT_STRINGS)
def test_a_nonce_that_is_not_a_string_is_refused(nonce):
    assert verify_error(verify_body(nonce=nonce)) == invalid(VERIFY_MISSING)


def test_too_many_responses_are_refused():
    responses = [answer(region_index=i) for i in range(MAX_RESPONSES + 1)]
    assert verify_error(verify_body(responses=responses)) == invalid(TOO_MANY_RESPONSES)
    assert verify_error(verify_body(responses=[5] * 17)) == invalid(TOO_MANY_RESPONSES)


@pytest.mark.parametrize("item", [None, 0, "0", [0, HMAC], True])
def test_a_response_that_is_not_an_object_is_refused(item):
    assert verify_error(verify_body(responses=[answer(), item])) == invalid(BAD_RESPONSE)


@pytest.mark.parametrize("region_index", [_ABSENT, None, 0.0, 1.5, True, False, "0", [0], {}])
def test_a_region_index_that_is_not_an_integer_is_refused(region_index):
    data = verify_body(responses=[answer(region_index=region_index, hmac=5)])
    assert verify_error(data) == invalid(BAD_REGION_INDEX)


@pytest.mark.parametrize("hmac", [_ABSENT, None, 5, True, ["ab"], {}, "h" * 129])
def test_an_hmac_that_is_not_a_string_is_refused(hmac):
    assert verify_error(verify_body(responses=[answer(hmac=hmac)])) == invalid(BAD_HMAC)


# -- POST /attest/versions -------------------------------------------------------------------


def test_an_empty_policy_body_is_the_default_policy():
    assert decode_policy(b"{}") == Policy("1.0.0", "1.0.0", (), ())
    nulls = body(
        minimum_version=None, recommended_version=None, blocked_versions=None, sunset_dates=None
    )
    assert decode_policy(nulls) == Policy()


def test_a_full_policy_decodes_and_drops_duplicate_blocked_versions():
    data = body(
        minimum_version="1.9.0",
        recommended_version="1.10.0",
        blocked_versions=["1.9.5", "0.1.0", "1.9.5", "2.0.0", "0.1.0"],
        sunset_dates={"1.9.0": "2025-06-30", "1.9.1": "2024-02-29"},
        extra=True,
    )
    assert decode_policy(data) == Policy(
        "1.9.0",
        "1.10.0",
        ("1.9.5", "0.1.0", "2.0.0"),
        (("1.9.0", "2025-06-30"), ("1.9.1", "2024-02-29")),
    )


def test_policy_bounds_are_inclusive():
    blocked = [f"0.0.{i}" for i in range(MAX_BLOCKED_VERSIONS)]
    sunset = {f"0.1.{i}": "2030-01-01" for i in range(MAX_SUNSET_DATES)}
    decoded = decode_policy(body(blocked_versions=blocked, sunset_dates=sunset))
    assert len(decoded.blocked_versions) == MAX_BLOCKED_VERSIONS
    assert len(decoded.sunset_dates) == MAX_SUNSET_DATES
    # The cap counts the list as sent, duplicates included.
    data = body(blocked_versions=["1.0.0"] * (MAX_BLOCKED_VERSIONS + 1))
    assert error_of(decode_policy, data) == invalid(BAD_BLOCKED)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"minimum_version": ""}, BAD_MINIMUM),
        ({"minimum_version": "1.0"}, BAD_MINIMUM),
        ({"minimum_version": "1.0.0-rc1"}, BAD_MINIMUM),
        ({"minimum_version": 1}, BAD_MINIMUM),
        ({"minimum_version": ["1.0.0"]}, BAD_MINIMUM),
        ({"recommended_version": ""}, BAD_RECOMMENDED),
        ({"recommended_version": "01.0.0"}, BAD_RECOMMENDED),
        ({"recommended_version": True}, BAD_RECOMMENDED),
        ({"blocked_versions": "1.0.0"}, BAD_BLOCKED),
        ({"blocked_versions": {"1.0.0": True}}, BAD_BLOCKED),
        ({"blocked_versions": ["1.0.0", "1.0"]}, BAD_BLOCKED),
        ({"blocked_versions": [None]}, BAD_BLOCKED),
        ({"blocked_versions": [1]}, BAD_BLOCKED),
        ({"blocked_versions": [f"0.0.{i}" for i in range(101)]}, BAD_BLOCKED),
        ({"sunset_dates": []}, BAD_SUNSET),
        ({"sunset_dates": "2025-01-01"}, BAD_SUNSET),
        ({"sunset_dates": [["1.0.0", "2025-01-01"]]}, BAD_SUNSET),
        ({"sunset_dates": {"1.0": "2025-01-01"}}, BAD_SUNSET),
        ({"sunset_dates": {"1.0.0": "2025-02-30"}}, BAD_SUNSET),
        ({"sunset_dates": {"1.0.0": "20250101"}}, BAD_SUNSET),
        ({"sunset_dates": {"1.0.0": "2025-01-01T00:00:00"}}, BAD_SUNSET),
        ({"sunset_dates": {"1.0.0": None}}, BAD_SUNSET),
        ({"sunset_dates": {"1.0.0": 20250101}}, BAD_SUNSET),
        ({"sunset_dates": {f"0.0.{i}": "2025-01-01" for i in range(101)}}, BAD_SUNSET),
    ],
)
def test_a_bad_policy_is_refused(fields, message):
    assert error_of(decode_policy, body(**fields)) == invalid(message)


@pytest.mark.parametrize(
    ("fields", "minimum", "recommended"),
    [
        ({"minimum_version": "1.1.0"}, "1.1.0", "1.0.0"),
        ({"minimum_version": "2.0.0"}, "2.0.0", "1.0.0"),
        ({"minimum_version": "1.10.0", "recommended_version": "1.9.0"}, "1.10.0", "1.9.0"),
        ({"recommended_version": "0.9.9"}, "1.0.0", "0.9.9"),
    ],
)
def test_a_recommended_version_below_the_minimum_is_accepted(fields, minimum, recommended):
    # docs/protocol/attestation.md, "GET and POST /attest/versions": every field is checked on its
    # own; the minimum is judged first, so a lower recommended version is harmless, and
    # {"minimum_version": "1.1.0"} alone must work.
    policy = decode_policy(body(**fields))
    assert (policy.minimum_version, policy.recommended_version) == (minimum, recommended)
    assert policy.blocked_versions == ()
    assert policy.sunset_dates == ()
    below = f"Version 1.0.0 is below minimum required version {minimum}"
    if minimum != "1.0.0":
        assert check_policy(policy, "1.0.0", today=TODAY).reason == below
    assert check_policy(policy, minimum, today=TODAY).status == "current"


def test_policy_fields_are_checked_in_order():
    data = body(
        minimum_version="x",
        recommended_version="y",
        blocked_versions="z",
        sunset_dates="w",
    )
    assert error_of(decode_policy, data) == invalid(BAD_MINIMUM)
    data = body(recommended_version="y", blocked_versions="z", sunset_dates="w")
    assert error_of(decode_policy, data) == invalid(BAD_RECOMMENDED)
    data = body(minimum_version="9.0.0", blocked_versions="z", sunset_dates="w")
    assert error_of(decode_policy, data) == invalid(BAD_BLOCKED)
    data = body(minimum_version="9.0.0", sunset_dates="w")
    assert error_of(decode_policy, data) == invalid(BAD_SUNSET)


# -- check_policy ----------------------------------------------------------------------------

TODAY = datetime.date(2025, 3, 15)
POLICY = Policy(
    minimum_version="1.2.0",
    recommended_version="1.10.0",
    blocked_versions=("1.5.0", "1.0.0"),
    sunset_dates=(("1.3.0", "2025-03-15"), ("1.4.0", "2025-03-16"), ("1.11.0", "2020-01-01")),
)


@pytest.mark.parametrize(
    ("version", "verdict"),
    [
        ("1.5.0", PolicyVerdict(False, "blocked", "Version 1.5.0 has been blocked")),
        # The blocked list answers before the minimum.
        ("1.0.0", PolicyVerdict(False, "blocked", "Version 1.0.0 has been blocked")),
        (
            "1.1.9",
            PolicyVerdict(
                False, "below_minimum", "Version 1.1.9 is below minimum required version 1.2.0"
            ),
        ),
        (
            "0.99.99",
            PolicyVerdict(
                False, "below_minimum", "Version 0.99.99 is below minimum required version 1.2.0"
            ),
        ),
        # On the day of its sunset date a version is refused...
        (
            "1.3.0",
            PolicyVerdict(False, "sunset", "Version 1.3.0 reached its sunset date 2025-03-15"),
        ),
        # ...and the day before it is still allowed.
        ("1.4.0", PolicyVerdict(True, "update_recommended", None)),
        (
            "1.11.0",
            PolicyVerdict(False, "sunset", "Version 1.11.0 reached its sunset date 2020-01-01"),
        ),
        ("1.2.0", PolicyVerdict(True, "update_recommended", None)),
        ("1.9.99", PolicyVerdict(True, "update_recommended", None)),
        # Numeric, not textual: 1.10.0 is above 1.9.x and 1.2.0.
        ("1.10.0", PolicyVerdict(True, "current", None)),
        ("1.10.1", PolicyVerdict(True, "current", None)),
        ("2.0.0", PolicyVerdict(True, "current", None)),
    ],
)
def test_check_policy_takes_the_first_rule_that_applies(version, verdict):
    assert check_policy(POLICY, version, today=TODAY) == verdict


def test_a_sunset_date_applies_from_its_own_day_on():
    policy = Policy(sunset_dates=(("1.0.0", "2025-03-15"),))
    day_before = check_policy(policy, "1.0.0", today=datetime.date(2025, 3, 14))
    assert day_before == PolicyVerdict(True, "current", None)
    for today in (datetime.date(2025, 3, 15), datetime.date(2026, 1, 1)):
        assert not check_policy(policy, "1.0.0", today=today).allowed
    # From 00:00 UTC, with today from utc_date.
    midnight = 1_742_000_000_000 - 1_742_000_000_000 % 86_400_000
    assert utc_date(midnight) == datetime.date(2025, 3, 15)
    assert not check_policy(policy, "1.0.0", today=utc_date(midnight)).allowed
    assert check_policy(policy, "1.0.0", today=utc_date(midnight - 1)).allowed


def test_the_default_policy_allows_every_version_from_1_0_0():
    assert check_policy(Policy(), "1.0.0", today=TODAY) == PolicyVerdict(True, "current", None)
    assert check_policy(Policy(), "0.9.9", today=TODAY) == PolicyVerdict(
        False, "below_minimum", "Version 0.9.9 is below minimum required version 1.0.0"
    )


@pytest.mark.parametrize("version", ["", "1.0", "v2.0.0", "99"])
def test_a_version_that_does_not_parse_is_below_minimum(version):
    verdict = check_policy(Policy(minimum_version="0.0.0"), version, today=TODAY)
    assert verdict == PolicyVerdict(
        False, "below_minimum", f"Version {version} is below minimum required version 0.0.0"
    )


# -- values: wire and record forms -----------------------------------------------------------

REGION = Region(16, 2, "beef", 0.5)
REFERENCE = Reference(
    "1.2.3", "android", "abc", 4096, (REGION, Region(0, 1, "00", 1.0)), 1_700_000_000_000
)
DEVICE = Device(
    DEVICE_ID,
    "1.2.3",
    "android",
    "abc",
    1_700_000_000_000,
    1_700_000_060_000,
    ("challenge_burst",),
    (1_700_000_001_000, 1_700_000_002_000),
    (1_699_999_000_000,),
)
CHALLENGE_RECORD = Challenge(NONCE, DEVICE_ID, "1.2.3", "android", ((16, 2), (0, 1)), 17)


def test_a_region_is_shown_in_the_contract_order():
    assert list(REGION.to_json()) == ["offset", "length", "data_hex", "weight"]
    assert REGION.to_json() == {"offset": 16, "length": 2, "data_hex": "beef", "weight": 0.5}
    assert REGION.data == b"\xbe\xef"


def test_a_reference_is_shown_in_the_contract_order():
    shown = REFERENCE.to_json()
    assert list(shown) == [
        "version",
        "platform",
        "build_hash",
        "size",
        "critical_regions",
        "uploaded_at",
    ]
    assert shown["critical_regions"] == [
        {"offset": 16, "length": 2, "data_hex": "beef", "weight": 0.5},
        {"offset": 0, "length": 1, "data_hex": "00", "weight": 1.0},
    ]


def test_a_device_shows_its_wire_form_and_keeps_bookkeeping_in_its_record():
    shown = DEVICE.to_json()
    assert list(shown) == [
        "device_id",
        "build_version",
        "platform",
        "build_hash",
        "registered_at",
        "last_seen",
        "anomaly_flags",
    ]
    assert shown["anomaly_flags"] == ["challenge_burst"]
    record = DEVICE.to_record()
    assert list(record) == [*shown, "challenge_times", "web_registrations"]
    assert record["challenge_times"] == [1_700_000_001_000, 1_700_000_002_000]
    assert record["web_registrations"] == [1_699_999_000_000]


def test_a_policy_is_shown_in_the_contract_order():
    shown = POLICY.to_json()
    assert list(shown) == [
        "minimum_version",
        "recommended_version",
        "blocked_versions",
        "sunset_dates",
    ]
    assert shown == {
        "minimum_version": "1.2.0",
        "recommended_version": "1.10.0",
        "blocked_versions": ["1.5.0", "1.0.0"],
        "sunset_dates": {"1.3.0": "2025-03-15", "1.4.0": "2025-03-16", "1.11.0": "2020-01-01"},
    }
    assert Policy().to_json() == {
        "minimum_version": "1.0.0",
        "recommended_version": "1.0.0",
        "blocked_versions": [],
        "sunset_dates": {},
    }


def through_json(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as the store writes and reads it: JSON text and back."""
    decoded: dict[str, Any] = json.loads(json.dumps(value))
    return decoded


def test_records_round_trip_through_json_text():
    assert Region.from_json(through_json(REGION.to_json())) == REGION
    assert Reference.from_json(through_json(REFERENCE.to_json())) == REFERENCE
    assert Device.from_record(through_json(DEVICE.to_record())) == DEVICE
    assert Challenge.from_record(through_json(CHALLENGE_RECORD.to_record())) == CHALLENGE_RECORD
    assert Policy.from_json(through_json(POLICY.to_json())) == POLICY
    assert Policy.from_json(through_json(Policy().to_json())) == Policy()
    plain = Device(DEVICE_ID, "1.0.0", "web", "h", 1, 2)
    assert Device.from_record(through_json(plain.to_record())) == plain


def test_an_uploaded_reference_round_trips():
    decoded = decode_upload_reference(
        regions_body(region(data_hex="ABCD", weight=3), region(offset=5), region(offset=7), size=10)
    )
    reference = Reference(
        decoded.version, decoded.platform, decoded.build_hash, decoded.size, decoded.regions, 9
    )
    assert Reference.from_json(through_json(reference.to_json())) == reference


def test_a_decoded_policy_round_trips():
    policy = decode_policy(
        body(blocked_versions=["2.0.0", "2.0.0"], sunset_dates={"1.0.0": "2030-12-31"})
    )
    assert Policy.from_json(through_json(policy.to_json())) == policy
    assert decode_policy(json.dumps(policy.to_json()).encode()) == policy


versions = st.builds("{}.{}.{}".format, *(st.integers(0, 999_999_999) for _ in range(3)))
identifiers = st.text(alphabet="aZ09._-", min_size=1, max_size=128)
epoch_ms = st.integers(0, 2**53 - 1)
regions = st.builds(
    lambda offset, data, weight: Region(offset, len(data), data.hex(), weight),
    st.integers(0, 2**53 - 1),
    st.binary(min_size=1, max_size=16),
    st.floats(min_value=1e-300, max_value=1e6),
)


@settings(deadline=None)
@given(
    st.builds(
        Reference,
        versions,
        identifiers,
        st.text(min_size=1, max_size=256),
        st.integers(0, 2**53 - 1),
        st.lists(regions, min_size=1, max_size=5).map(tuple),
        epoch_ms,
    ),
    st.builds(
        Device,
        identifiers,
        versions,
        identifiers,
        st.text(min_size=1, max_size=256),
        epoch_ms,
        epoch_ms,
        st.lists(st.text(max_size=10), max_size=3).map(tuple),
        st.lists(epoch_ms, max_size=20).map(tuple),
        st.lists(epoch_ms, max_size=10).map(tuple),
    ),
    st.builds(
        Challenge,
        st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        identifiers,
        versions,
        identifiers,
        st.lists(st.tuples(st.integers(0, 2**53 - 1), st.integers(1, 4096)), max_size=5).map(tuple),
        epoch_ms,
    ),
    st.builds(
        Policy,
        versions,
        versions,
        st.lists(versions, max_size=5, unique=True).map(tuple),
        st.dictionaries(versions, st.dates().map(datetime.date.isoformat), max_size=5).map(
            lambda dates: tuple(dates.items())
        ),
    ),
)
def test_every_value_round_trips(reference, device, challenge, policy):
    assert Reference.from_json(through_json(reference.to_json())) == reference
    assert Device.from_record(through_json(device.to_record())) == device
    assert Challenge.from_record(through_json(challenge.to_record())) == challenge
    assert Policy.from_json(through_json(policy.to_json())) == policy


# -- no input crashes a decoder --------------------------------------------------------------

_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
_IDENTIFIER_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")

version_like = (
    versions
    | st.sampled_from(["1.0.0", "1.10.0", "0.0.0", "1.0", "01.0.0", "1.0.0-beta", "１.0.0", ""])  # noqa: RUF001
    | st.text(alphabet="0123456789.-+ ", max_size=12)
)
identifier_like = (
    identifiers
    | st.sampled_from(["web", "android", DEVICE_ID, "", "bad id", "d" * 129])
    | st.text(alphabet="aZ9._- /:\n", max_size=12)
)
text_like = st.text(max_size=20) | st.text(alphabet="h", min_size=255, max_size=258)
int_like = json_scalars | st.sampled_from(
    [0, 1, -1, 2, 4096, 4097, 2**53 - 1, 2**53, 10**30, 1.0, 1e300, -0.0]
)
hex_like = st.binary(max_size=8).map(bytes.hex) | st.text(alphabet="0123456789abcdefABCDEFg ")
claims_like = st.fixed_dictionaries(
    {},
    optional={
        "version": version_like | json_values,
        "platform": identifier_like | json_values,
        "build_hash": text_like | json_values,
        "timestamp": int_like | json_values,
    },
)
payload_like = (
    st.builds(json.dumps, claims_like)
    | st.builds(json.dumps, json_values)
    | st.text()
    | st.sampled_from(["", "{", "[" * 50, '{"a":NaN}', '{"a":1e400}', '"\\ud800"', "\ud800"])
)
token_like = (
    st.fixed_dictionaries(
        {},
        optional={
            "payload": payload_like | json_values,
            "signature": st.text(max_size=10)
            | st.text(alphabet="s", min_size=199, max_size=202)
            | json_values,
        },
    )
    | json_values
)
region_like = (
    st.fixed_dictionaries(
        {},
        optional={
            "offset": int_like | json_values,
            "length": int_like | json_values,
            "data_hex": hex_like | json_values,
            "weight": int_like | json_values,
        },
    )
    | json_values
)
response_like = (
    st.fixed_dictionaries(
        {},
        optional={
            "region_index": int_like | json_values,
            "hmac": st.text(max_size=10) | st.text(alphabet="f", min_size=127, max_size=130),
        },
    )
    | json_values
)
dates_like = st.dates().map(datetime.date.isoformat) | st.text(
    alphabet="0123456789-WT: ", max_size=12
)


def encode_object(obj: dict[str, Any], ensure_ascii: bool) -> bytes:
    # surrogatepass: a lone surrogate becomes bytes that are not UTF-8, which the decoder
    # must refuse as well.
    return json.dumps(obj, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


Field = tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]


def bodies_of(fields: dict[str, Field], required: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    """Bodies of one endpoint from ``(valid values, near misses)`` per field, in three shapes:
    any of its fields, each maybe present; its required fields always there; and every field
    valid but at most one (so that bodies reach the later checks and succeed). Any JSON value
    stands in for a near miss too; unknown fields ride along; arbitrary bytes as well."""
    mixed = {name: mostly(valid, like) for name, (valid, like) in fields.items()}
    loose = st.fixed_dictionaries({}, optional=mixed)
    firm = st.fixed_dictionaries(
        {name: mixed[name] for name in required},
        optional={name: value for name, value in mixed.items() if name not in required},
    )
    one_change = st.just({}) | st.sampled_from(sorted(fields)).flatmap(
        lambda name: st.one_of(fields[name][1], json_values).map(lambda value: {name: value})
    )
    near_valid = st.builds(
        lambda valid, change: {**valid, **change},
        st.fixed_dictionaries({name: valid for name, (valid, _) in fields.items()}),
        one_change,
    )
    objects = st.builds(
        lambda extra, known: {**extra, **known}, json_objects, st.one_of(loose, firm, near_valid)
    )
    return st.builds(encode_object, objects, st.booleans()) | st.binary(max_size=80)


def mostly(valid: st.SearchStrategy[Any], like: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values half of the time; near misses or any JSON value the other half."""
    return st.one_of(valid, st.one_of(like, json_values))


good_versions = versions | st.sampled_from(["1.0.0", "1.9.0", "1.10.0", "2.0.0"])
device_ids = (st.just(DEVICE_ID) | identifiers, identifier_like)
valid_claims = st.fixed_dictionaries(
    {
        "version": good_versions,
        "platform": identifiers,
        "build_hash": st.text(min_size=1, max_size=256),
        "timestamp": st.integers(),
    }
)
payloads = st.builds(json.dumps, valid_claims) | payload_like
valid_tokens = st.fixed_dictionaries(
    {
        "payload": payloads,
        "signature": st.text(alphabet="AZaz09+/=-_", min_size=1, max_size=100),
    }
)
valid_regions = st.builds(
    lambda offset, data, upper, weight: {
        "offset": offset,
        "length": len(data),
        "data_hex": data.hex().upper() if upper else data.hex(),
        **({} if weight is None else {"weight": weight}),
    },
    st.integers(0, 64),
    st.binary(min_size=1, max_size=8),
    st.booleans(),
    st.none() | st.integers(1, 10) | st.floats(1e-3, 1e6),
)
valid_responses = st.fixed_dictionaries(
    {"region_index": st.integers(-2, 6), "hmac": st.text(alphabet="0123456789abcdef")}
)

register_bodies = bodies_of(
    {"build_token": (valid_tokens, token_like), "device_id": device_ids},
    required=("build_token", "device_id"),
)
upload_bodies = bodies_of(
    {
        "version": (good_versions, version_like),
        "platform": (identifiers, identifier_like),
        "build_hash": (st.text(min_size=1, max_size=256), text_like),
        "size": (st.none() | st.integers(0, 80), int_like),
        "critical_regions": (
            st.lists(valid_regions, min_size=1, max_size=4),
            st.lists(valid_regions | region_like, max_size=4)
            | st.lists(valid_regions, min_size=MAX_REGIONS, max_size=MAX_REGIONS + 1),
        ),
    },
    required=("version", "platform", "build_hash", "critical_regions"),
)
challenge_bodies = bodies_of(
    {"device_id": device_ids, "build_version": (good_versions, version_like)},
    required=("device_id", "build_version"),
)
verify_bodies = bodies_of(
    {
        "device_id": device_ids,
        "nonce": (st.just(NONCE), st.text(max_size=70)),
        "responses": (
            st.lists(valid_responses, max_size=6),
            st.lists(valid_responses | response_like, max_size=6)
            | st.lists(valid_responses, min_size=15, max_size=18),
        ),
    },
    required=("device_id", "nonce", "responses"),
)
policy_bodies = bodies_of(
    {
        "minimum_version": (st.none() | good_versions, version_like),
        "recommended_version": (st.none() | good_versions, version_like),
        "blocked_versions": (
            st.lists(good_versions, max_size=4),
            st.lists(version_like | json_values, max_size=4),
        ),
        "sunset_dates": (
            st.dictionaries(good_versions, st.dates().map(datetime.date.isoformat), max_size=3),
            st.dictionaries(version_like, dates_like | json_values, max_size=4),
        ),
    },
    required=(),
)


def outcome(decode: Callable[[], T]) -> T | ProtocolError:
    """What ``decode`` returns, or the ``ProtocolError`` it raises; anything else escapes."""
    try:
        return decode()
    except ProtocolError as exc:
        return exc


def is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(deadline=None, max_examples=300)
@given(register_bodies)
def test_decode_register_raises_only_protocol_errors(data):
    decoded = outcome(lambda: decode_register(data))
    if isinstance(decoded, ProtocolError):
        assert decoded.code in {errors.INVALID_BODY, errors.INVALID_FIELD}
        return
    assert _IDENTIFIER_RE.fullmatch(decoded.device_id)
    assert 1 <= len(decoded.payload) <= 4096
    assert is_unicode(decoded.payload)
    assert 1 <= len(decoded.signature) <= 200
    assert decoded.signature.isascii()


@settings(deadline=None, max_examples=300)
@given(payloads)
def test_parse_build_token_payload_raises_only_protocol_errors(payload):
    claims = outcome(lambda: parse_build_token_payload(payload))
    if isinstance(claims, ProtocolError):
        assert claims.code == errors.INVALID_FIELD
        return
    assert _VERSION_RE.fullmatch(claims.version)
    assert _IDENTIFIER_RE.fullmatch(claims.platform)
    assert 1 <= len(claims.build_hash) <= 256
    assert type(claims.timestamp) is int


@settings(deadline=None, max_examples=300)
@given(upload_bodies)
def test_decode_upload_reference_raises_only_protocol_errors(data):
    decoded = outcome(lambda: decode_upload_reference(data))
    if isinstance(decoded, ProtocolError):
        assert decoded.code in {errors.INVALID_BODY, errors.INVALID_FIELD}
        return
    assert _VERSION_RE.fullmatch(decoded.version)
    assert _IDENTIFIER_RE.fullmatch(decoded.platform)
    assert 0 <= decoded.size <= 2**53 - 1
    assert 1 <= len(decoded.regions) <= MAX_REGIONS
    for item in decoded.regions:
        assert 1 <= item.length <= MAX_REGION_BYTES
        assert len(item.data) == item.length
        assert item.data_hex == item.data_hex.lower()
        assert type(item.weight) is float
        assert 0 < item.weight <= 1_000_000
        assert decoded.size == 0 or item.offset + item.length <= decoded.size


@settings(deadline=None, max_examples=300)
@given(challenge_bodies)
def test_decode_challenge_raises_only_protocol_errors(data):
    decoded = outcome(lambda: decode_challenge(data))
    if isinstance(decoded, ProtocolError):
        assert decoded.code in {errors.INVALID_BODY, errors.INVALID_FIELD}
        return
    assert _IDENTIFIER_RE.fullmatch(decoded.device_id)
    assert _VERSION_RE.fullmatch(decoded.build_version)


@settings(deadline=None, max_examples=300)
@given(verify_bodies)
def test_decode_verify_raises_only_protocol_errors(data):
    decoded = outcome(lambda: decode_verify(data))
    if isinstance(decoded, ProtocolError):
        assert decoded.code in {errors.INVALID_BODY, errors.INVALID_FIELD}
        return
    assert _IDENTIFIER_RE.fullmatch(decoded.device_id)
    assert isinstance(decoded.nonce, str)
    assert is_unicode(decoded.nonce)
    assert len(decoded.responses) <= MAX_RESPONSES
    for index, hmac in decoded.responses:
        assert type(index) is int
        assert isinstance(hmac, str)
        assert len(hmac) <= 128


@settings(deadline=None, max_examples=300)
@given(policy_bodies)
def test_decode_policy_raises_only_protocol_errors(data):
    policy = outcome(lambda: decode_policy(data))
    if isinstance(policy, ProtocolError):
        assert policy.code in {errors.INVALID_BODY, errors.INVALID_FIELD}
        return
    assert is_version(policy.minimum_version)
    assert is_version(policy.recommended_version)
    assert all(is_version(version) for version in policy.blocked_versions)
    assert len(set(policy.blocked_versions)) == len(policy.blocked_versions)
    assert all(is_version(v) and is_sunset_date(d) for v, d in policy.sunset_dates)
    # Whatever a valid policy holds, judging any version never raises.
    for version in ("1.0.0", policy.minimum_version, *policy.blocked_versions):
        check_policy(policy, version, today=TODAY)
    assert Policy.from_json(through_json(policy.to_json())) == policy


@pytest.mark.parametrize(
    "data",
    [
        register_body(device_id="a\ud800"),
        token_body(payload="bad \ud800 text"),
        token_body(signature="\udfff"),
        upload_body(build_hash="\ud800"),
        verify_body(nonce="\ud800"),
        verify_body(responses=[answer(hmac="\udc00")]),
    ],
)
def test_a_lone_surrogate_anywhere_is_not_json_text(data):
    # A lone surrogate escape cannot be written back as UTF-8, so the body is refused as a
    # whole, whichever field holds it (docs/protocol/conventions.md, "Encoding").
    assert b"\\ud8" in data or b"\\udc" in data or b"\\udf" in data
    for decode in ALL_DECODERS:
        assert error_of(decode, data) == ProtocolError(errors.INVALID_BODY, "Invalid JSON body")
