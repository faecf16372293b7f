"""``zajel attest make-reference``, ``zajel attest sign-build-token`` and ``zajel attest
answer``, and the helpers behind them (docs/protocol/attestation.md, "zajel attest")."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import random
from pathlib import Path

import pytest

from zajel import clock
from zajel.attestation import answer_challenge, make_reference, region_hmacs
from zajel.cli import main
from zajel.crypto import decode_signature, public_key_b64, signing_key, verify_detached
from zajel.crypto.keys import parse_public_key
from zajel.protocol.attestation import (
    UPLOAD_MAX_BYTES,
    decode_upload_reference,
    decode_verify,
    parse_build_token_payload,
)

SEED = bytes(range(32))
SEED_HEX = SEED.hex()
PUBLIC_KEY = public_key_b64(signing_key(SEED))
BUILD_HASH = "a" * 64


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "app.bin"
    path.write_bytes(random.Random(7).randbytes(64 * 1024))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err: str) -> None:
    assert err.startswith("zajel: ")
    assert err.endswith("\n")
    assert err.count("\n") == 1


# -- make-reference ------------------------------------------------------------------------


def test_make_reference_prints_an_upload_body_of_the_file(capsys, binary):
    status, out, err = run(
        capsys, "attest", "make-reference", str(binary), "--version", "1.2.3", "--platform", "ios"
    )
    assert status == 0
    assert err == ""
    assert out.endswith("\n")
    assert out.count("\n") == 1
    data = binary.read_bytes()
    body = json.loads(out)
    assert list(body) == ["version", "platform", "build_hash", "size", "critical_regions"]
    assert body["version"] == "1.2.3"
    assert body["platform"] == "ios"
    assert body["size"] == len(data)
    assert body["build_hash"] == hashlib.sha256(data).hexdigest()
    regions = body["critical_regions"]
    assert len(regions) == 16
    end = 0
    for region in regions:
        assert set(region) == {"offset", "length", "data_hex", "weight"}
        assert region["length"] == 256
        assert region["weight"] == 1
        # In file order and not overlapping: each starts at or after the previous one's end.
        assert region["offset"] >= end
        end = region["offset"] + region["length"]
        assert end <= len(data)
        assert region["data_hex"] == data[region["offset"] : end].hex()
    reference = decode_upload_reference(out.strip().encode())
    assert reference.size == len(data)
    assert len(reference.regions) == 16


def test_make_reference_spreads_regions_over_the_file(binary):
    data = binary.read_bytes()
    body = make_reference(
        data, version="1.0.0", platform="android", rng=random.Random(1), regions=8
    )
    slice_bytes = len(data) // 8
    for i, region in enumerate(body["critical_regions"]):
        assert i * slice_bytes <= region["offset"]
        assert region["offset"] + region["length"] <= (i + 1) * slice_bytes


def test_make_reference_options(capsys, binary):
    status, out, _ = run(
        capsys,
        "attest",
        "make-reference",
        str(binary),
        "--version",
        "2.0.10",
        "--platform",
        "android",
        "--regions",
        "3",
        "--region-bytes",
        "4096",
        "--build-hash",
        "ci-build-4711",
    )
    assert status == 0
    body = json.loads(out)
    assert body["build_hash"] == "ci-build-4711"
    assert [region["length"] for region in body["critical_regions"]] == [4096] * 3
    decode_upload_reference(out.encode())


def test_a_small_file_gets_as_many_whole_regions_as_fit():
    data = bytes(range(256)) * 3 + b"xyz"  # 771 bytes: three regions of 256
    for seed in range(20):
        body = make_reference(data, version="1.0.0", platform="android", rng=random.Random(seed))
        regions = body["critical_regions"]
        assert [region["length"] for region in regions] == [256, 256, 256]
        # Slices of 257 bytes: each region starts at its slice's first or second byte.
        assert all(0 <= region["offset"] - 257 * i <= 1 for i, region in enumerate(regions))
        decode_upload_reference(json.dumps(body).encode())


def test_the_body_limit_is_checked_exactly():
    data = random.Random(5).randbytes(1 << 20)
    fits = make_reference(data, version="1.0.0", platform="android", regions=7, region_bytes=4096)
    assert len(json.dumps(fits, separators=(",", ":"))) <= UPLOAD_MAX_BYTES
    with pytest.raises(ValueError, match="upload limit; use fewer or smaller regions"):
        make_reference(data, version="1.0.0", platform="android", regions=8, region_bytes=4096)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--version", "1.2", "--platform", "android"], "version must be X.Y.Z"),
        (["--version", "01.2.3", "--platform", "android"], "version must be X.Y.Z"),
        (["--version", "1.2.3", "--platform", "and roid"], "platform must be"),
        (["--version", "1.2.3", "--platform", "android", "--regions", "2"], "regions must be"),
        (["--version", "1.2.3", "--platform", "android", "--regions", "257"], "regions must be"),
        (
            ["--version", "1.2.3", "--platform", "android", "--region-bytes", "0"],
            "region bytes must be",
        ),
        (
            ["--version", "1.2.3", "--platform", "android", "--region-bytes", "4097"],
            "region bytes must be",
        ),
        (
            ["--version", "1.2.3", "--platform", "android", "--build-hash", "h" * 257],
            "build hash must be",
        ),
        (
            ["--version", "1.2.3", "--platform", "android", "--region-bytes", "4096"],
            "65536-byte upload limit",
        ),
        (
            ["--version", "1.2.3", "--platform", "android", "--regions", "256"],
            "65536-byte upload limit",
        ),
    ],
)
def test_make_reference_refusals(capsys, binary, argv, message):
    status, out, err = run(capsys, "attest", "make-reference", str(binary), *argv)
    assert status == 2
    assert out == ""
    assert_one_line_error(err)
    assert message in err


def test_make_reference_of_a_missing_file(capsys, tmp_path):
    missing = tmp_path / "missing.bin"
    status, out, err = run(
        capsys, "attest", "make-reference", str(missing), "--version", "1.0.0", "--platform", "x"
    )
    assert status == 2
    assert out == ""
    assert_one_line_error(err)
    assert err == f"zajel: cannot read {missing}: No such file or directory\n"


def test_make_reference_of_a_directory(capsys, tmp_path):
    status, out, err = run(
        capsys, "attest", "make-reference", str(tmp_path), "--version", "1.0.0", "--platform", "x"
    )
    assert status == 2
    assert out == ""
    assert_one_line_error(err)
    assert "cannot read" in err


def test_make_reference_of_a_tiny_file(capsys, tmp_path):
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"0123456789")
    status, out, err = run(
        capsys, "attest", "make-reference", str(tiny), "--version", "1.0.0", "--platform", "x"
    )
    assert status == 2
    assert out == ""
    assert err == "zajel: the binary is 10 bytes: smaller than one region of 256 bytes\n"
    # Three regions of 3 bytes fit in 10 bytes.
    argv = ["attest", "make-reference", str(tiny), "--version", "1.0.0", "--platform", "x"]
    assert main([*argv, "--region-bytes", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["critical_regions"]) == 3


@pytest.mark.parametrize(("region_bytes", "count"), [(4, 2), (5, 2), (6, 1), (10, 1)])
def test_a_binary_too_small_for_3_regions_gets_one_or_two(capsys, tmp_path, region_bytes, count):
    # The server accepts a reference of 1 or 2 regions and challenges it whole
    # (docs/protocol/attestation.md, "POST /attest/upload-reference").
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"0123456789")
    argv = ["attest", "make-reference", str(tiny), "--version", "1.0.0", "--platform", "x"]
    status, out, err = run(capsys, *argv, "--region-bytes", str(region_bytes))
    assert (status, err) == (0, "")
    reference = decode_upload_reference(out.strip().encode())
    assert len(reference.regions) == count
    for region in reference.regions:
        assert region.length == region_bytes
        assert region.data == b"0123456789"[region.offset : region.offset + region_bytes]


def test_attest_needs_a_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["attest"])
    assert exit_info.value.code == 2
    assert "usage: zajel attest" in capsys.readouterr().err


# -- sign-build-token ----------------------------------------------------------------------


def sign(capsys, *extra: str, seed: str = SEED_HEX) -> tuple[int, str, str]:
    return run(
        capsys,
        "attest",
        "sign-build-token",
        "--seed",
        seed,
        "--version",
        "1.4.0",
        "--platform",
        "android",
        "--build-hash",
        BUILD_HASH,
        *extra,
    )


def check_token(out: str, timestamp: int | None = None) -> int:
    """Verify a printed build token as the server does; return its timestamp."""
    assert out.endswith("\n")
    assert out.count("\n") == 1
    token = json.loads(out)
    assert set(token) == {"payload", "signature"}
    signature = decode_signature(token["signature"])
    assert signature is not None
    key = parse_public_key(PUBLIC_KEY)
    assert verify_detached(key, token["payload"].encode("utf-8"), signature)
    claims = parse_build_token_payload(token["payload"])
    assert claims.version == "1.4.0"
    assert claims.platform == "android"
    assert claims.build_hash == BUILD_HASH
    if timestamp is not None:
        assert claims.timestamp == timestamp
    return claims.timestamp


def test_sign_build_token_with_a_timestamp(capsys):
    status, out, err = sign(capsys, "--timestamp", "1700000000000")
    assert status == 0
    assert err == ""
    check_token(out, 1_700_000_000_000)


def test_sign_build_token_defaults_to_now(capsys):
    before = clock.epoch_ms()
    status, out, _ = sign(capsys)
    after = clock.epoch_ms()
    assert status == 0
    assert before <= check_token(out) <= after


def test_sign_build_token_reads_a_seed_file(capsys, tmp_path):
    key_file = tmp_path / "build-token.key"
    key_file.write_text(SEED_HEX + "\n")
    status, out, err = sign(capsys, "--timestamp", "5", seed=f"@{key_file}")
    assert status == 0
    assert err == ""
    check_token(out, 5)


@pytest.mark.parametrize(
    "seed",
    [
        SEED_HEX[:-1],  # 63 characters
        SEED_HEX[:-1] + "g",
        SEED_HEX + "00",
        "",
        "@",
    ],
)
def test_a_bad_seed_is_refused_without_echoing_it(capsys, seed):
    status, out, err = sign(capsys, seed=seed)
    assert status == 2
    assert out == ""
    assert_one_line_error(err)
    assert err.startswith("zajel: --seed: ")
    if len(seed) > 2:
        assert seed not in err
        assert seed[:16] not in err


def test_a_bad_seed_file_is_refused_without_echoing_it(capsys, tmp_path):
    key_file = tmp_path / "bad.key"
    secret = "5" * 63 + "x"
    key_file.write_text(secret)
    status, out, err = sign(capsys, seed=f"@{key_file}")
    assert status == 2
    assert out == ""
    assert_one_line_error(err)
    assert str(key_file) in err
    assert secret[:16] not in err
    status, out, err = sign(capsys, seed=f"@{tmp_path / 'none.key'}")
    assert status == 2
    assert_one_line_error(err)
    assert "cannot read key file" in err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("--version", "1.4", "version must be X.Y.Z"),
        ("--version", "v1.4.0", "version must be X.Y.Z"),
        ("--platform", "", "platform must be"),
        ("--platform", "p" * 129, "platform must be"),
        ("--build-hash", "", "build hash must be"),
        ("--timestamp", "-1", "--timestamp"),
    ],
)
def test_sign_build_token_refuses_what_the_server_would(capsys, field, value, message):
    argv = {
        "--seed": SEED_HEX,
        "--version": "1.4.0",
        "--platform": "android",
        "--build-hash": BUILD_HASH,
    }
    argv[field] = value
    flat = [part for pair in argv.items() for part in pair]
    status, out, err = run(capsys, "attest", "sign-build-token", *flat)
    assert status == 2
    assert out == ""
    assert_one_line_error(err)
    assert message in err
    assert SEED_HEX not in err


# -- region_hmacs --------------------------------------------------------------------------


def test_region_hmacs_is_what_the_server_expects(binary):
    data = binary.read_bytes()
    nonce = random.Random(9).randbytes(32).hex()
    regions = [(0, 256), (4096, 17), (len(data) - 1, 1)]
    expected = [
        hmac.new(bytes.fromhex(nonce), data[offset : offset + length], hashlib.sha256).hexdigest()
        for offset, length in regions
    ]
    assert region_hmacs(data, nonce, regions) == expected
    assert region_hmacs(data, nonce.upper(), regions) == expected
    assert region_hmacs(data, nonce, []) == []


def test_region_hmacs_answers_a_reference(binary):
    data = binary.read_bytes()
    body = make_reference(data, version="1.0.0", platform="android")
    nonce = "ab" * 32
    places = [(region["offset"], region["length"]) for region in body["critical_regions"]]
    key = bytes.fromhex(nonce)
    assert region_hmacs(data, nonce, places) == [
        hmac.new(key, bytes.fromhex(region["data_hex"]), hashlib.sha256).hexdigest()
        for region in body["critical_regions"]
    ]


@pytest.mark.parametrize(
    ("nonce", "regions"),
    [
        ("abc", [(0, 1)]),
        ("zz", [(0, 1)]),
        ("", [(0, 1)]),
        ("ab cd", [(0, 1)]),
        ("ab", [(-1, 1)]),
        ("ab", [(0, 0)]),
        ("ab", [(65535, 2)]),
    ],
)
def test_region_hmacs_refuses_a_bad_nonce_or_region(binary, nonce, regions):
    with pytest.raises(ValueError, match=r"^(nonce|region) "):
        region_hmacs(binary.read_bytes(), nonce, regions)


# -- answer ---------------------------------------------------------------------------------

NONCE = "5e" * 32
CHALLENGE = {
    "nonce": NONCE,
    "regions": [
        {"index": 0, "offset": 4096, "length": 256},
        {"index": 1, "offset": 0, "length": 17},
        {"index": 2, "offset": 65535, "length": 1},
    ],
}


def expected_verify_body(data: bytes, device_id: str = "pixel-7a-4f2c") -> dict:
    key = bytes.fromhex(NONCE)
    return {
        "device_id": device_id,
        "nonce": NONCE,
        "responses": [
            {
                "region_index": region["index"],
                "hmac": hmac.new(
                    key,
                    data[region["offset"] : region["offset"] + region["length"]],
                    hashlib.sha256,
                ).hexdigest(),
            }
            for region in CHALLENGE["regions"]
        ],
    }


def stdin_holding(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_answer_prints_the_verify_body_for_a_challenge_file(capsys, binary, tmp_path):
    challenge = tmp_path / "challenge.json"
    challenge.write_text(json.dumps(CHALLENGE))
    status, out, err = run(
        capsys,
        "attest",
        "answer",
        str(binary),
        "--device-id",
        "pixel-7a-4f2c",
        "--challenge",
        str(challenge),
    )
    assert (status, err) == (0, "")
    assert out.count("\n") == 1
    assert out.endswith("\n")
    assert json.loads(out) == expected_verify_body(binary.read_bytes())
    assert list(json.loads(out)) == ["device_id", "nonce", "responses"]
    # The body the server decodes.
    decoded = decode_verify(out.encode())
    assert decoded.device_id == "pixel-7a-4f2c"
    assert [index for index, _ in decoded.responses] == [0, 1, 2]


@pytest.mark.parametrize("argv", [[], ["--challenge", "-"]])
def test_answer_reads_the_challenge_from_stdin(capsys, monkeypatch, binary, argv):
    # Exactly as curl prints the reply: compact, with a final newline.
    stdin_holding(monkeypatch, json.dumps(CHALLENGE, separators=(",", ":")).encode() + b"\n")
    status, out, err = run(capsys, "attest", "answer", str(binary), "--device-id", "d-1", *argv)
    assert (status, err) == (0, "")
    assert json.loads(out) == expected_verify_body(binary.read_bytes(), "d-1")


def test_answer_keeps_the_challenge_order_and_indexes():
    data = bytes(range(256)) * 4
    challenge = {
        "nonce": NONCE,
        "regions": [
            {"index": 1, "offset": 10, "length": 4},
            {"index": 0, "offset": 900, "length": 8},
        ],
    }
    body = answer_challenge(data, challenge, device_id="d")
    assert body["responses"] == [
        {"region_index": 1, "hmac": region_hmacs(data, NONCE, [(10, 4)])[0]},
        {"region_index": 0, "hmac": region_hmacs(data, NONCE, [(900, 8)])[0]},
    ]


@pytest.mark.parametrize(
    ("challenge", "device_id", "message"),
    [
        (b"not json", "d", "zajel: the challenge in stdin is not JSON\n"),
        (b"\xff\xfe", "d", "zajel: the challenge in stdin is not JSON\n"),
        (b"[1, 2]", "d", "zajel: the challenge is not a JSON object\n"),
        (
            b'{"error":"Device not registered"}',
            "d",
            "zajel: the challenge is an error reply: 'Device not registered'\n",
        ),
        (
            b'{"nonce":"ab"}',
            "d",
            "zajel: the challenge has no nonce or no regions: expected the reply of POST "
            "/attest/challenge\n",
        ),
        (
            b'{"nonce":"ab","regions":[]}',
            "d",
            "zajel: the challenge has no nonce or no regions: expected the reply of POST "
            "/attest/challenge\n",
        ),
        (
            b'{"nonce":"ab","regions":[{"index":0,"offset":"0","length":1}]}',
            "d",
            "zajel: each challenge region must have an integer index, offset and length\n",
        ),
        (
            b'{"nonce":"ab","regions":[{"index":true,"offset":0,"length":1}]}',
            "d",
            "zajel: each challenge region must have an integer index, offset and length\n",
        ),
        (
            b'{"nonce":"ab","regions":[7]}',
            "d",
            "zajel: each challenge region must have an integer index, offset and length\n",
        ),
        (
            b'{"nonce":"xyz","regions":[{"index":0,"offset":0,"length":1}]}',
            "d",
            "zajel: nonce must be an even number of hex digits\n",
        ),
        (
            b'{"nonce":"ab","regions":[{"index":0,"offset":65535,"length":2}]}',
            "d",
            "zajel: region at offset 65535 of length 2 is not inside the 65536-byte binary\n",
        ),
        (json.dumps(CHALLENGE).encode(), "no spaces", "zajel: device id must be"),
        (json.dumps(CHALLENGE).encode(), "", "zajel: device id must be"),
        (b" " * (64 * 1024) + b"{}", "d", "zajel: the challenge in stdin is over 65536 bytes\n"),
    ],
)
def test_answer_refuses_what_is_not_a_challenge_it_can_answer(
    capsys, monkeypatch, binary, challenge, device_id, message
):
    stdin_holding(monkeypatch, challenge)
    status, out, err = run(capsys, "attest", "answer", str(binary), "--device-id", device_id)
    assert status == 2
    assert out == ""
    assert_one_line_error(err)
    assert err.startswith(message)


def test_answer_of_a_missing_binary_or_challenge_file(capsys, binary, tmp_path):
    challenge = tmp_path / "challenge.json"
    challenge.write_text(json.dumps(CHALLENGE))
    missing = tmp_path / "missing"
    argv = ["attest", "answer", "--device-id", "d"]
    status, out, err = run(capsys, *argv, str(missing), "--challenge", str(challenge))
    assert (status, out) == (2, "")
    assert err == f"zajel: cannot read {missing}: No such file or directory\n"
    status, out, err = run(capsys, *argv, str(binary), "--challenge", str(missing))
    assert (status, out) == (2, "")
    assert err == f"zajel: cannot read {missing}: No such file or directory\n"


def test_answer_needs_a_device_id(capsys, binary):
    with pytest.raises(SystemExit) as info:
        main(["attest", "answer", str(binary)])
    assert info.value.code == 2
    assert "--device-id" in capsys.readouterr().err
