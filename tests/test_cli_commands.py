"""``zajel keygen`` and ``zajel servers`` (docs/operations.md, "Other commands";
docs/protocol/servers.md, "The signed list").

``zajel servers`` is run against a small stdlib HTTP server on 127.0.0.1 in a background thread,
serving whatever reply the test sets.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import re
import socket
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attrs
import pytest

from zajel import clock
from zajel.cli import build_parser, main, serve_config
from zajel.crypto import (
    generate_seed,
    load_seed,
    parse_seed,
    public_key_b64,
    sign_b64,
    signing_key,
)

KEY = signing_key(bytes(range(32)))
PUBLIC_KEY = public_key_b64(KEY)
NOW = 1_700_000_000_000
ENTRIES = [
    {
        "serverId": "ed25519:first",
        "endpoint": "wss://first.example",
        "publicKey": "cHVibGljLWtleS0x",
        "region": "eu-west",
        "connections": 12,
        "relayConnections": 3,
        "signalingConnections": 9,
        "activeCodes": 4,
        "registeredAt": NOW - 600_000,
        "lastSeen": NOW - 5_000,
    },
    {
        "serverId": "ed25519:second",
        "endpoint": "wss://second.example:8443",
        "publicKey": "cHVibGljLWtleS0y",
        "region": "unknown",
        "connections": 0,
        "relayConnections": 0,
        "signalingConnections": 0,
        "activeCodes": 0,
        "registeredAt": NOW - 120_000,
        "lastSeen": NOW - 61_500,
    },
]


# -- keygen --------------------------------------------------------------------------------


def test_keygen_prints_a_seed_and_its_public_key(capsys):
    assert main(["keygen"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    assert out.endswith("\n")
    assert re.fullmatch(r"seed=[0-9a-f]{64}", lines[0])
    assert re.fullmatch(r"public_key=[A-Za-z0-9+/]{43}=", lines[1])
    seed = parse_seed(lines[0].removeprefix("seed="))
    public_key = lines[1].removeprefix("public_key=")
    assert len(base64.b64decode(public_key, validate=True)) == 32
    assert public_key == public_key_b64(signing_key(seed))


def test_keygen_makes_a_new_key_each_time(capsys):
    main(["keygen"])
    main(["keygen"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[0] != lines[2]
    assert lines[1] != lines[3]


def test_keygen_writes_the_seed_to_a_private_file(capsys, tmp_path):
    path = tmp_path / "bootstrap.key"
    assert main(["keygen", "--seed-file", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    public_key = lines[0].removeprefix("public_key=")
    assert lines[0].startswith("public_key=")
    assert str(path) in lines[1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", content)
    assert content.strip() not in out  # the seed is only in the file
    assert public_key_b64(signing_key(load_seed(f"@{path}"))) == public_key


def test_keygen_never_overwrites_a_seed_file(capsys, tmp_path):
    path = tmp_path / "bootstrap.key"
    path.write_text("keep me\n")
    assert main(["keygen", "--seed-file", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"zajel: {path} already exists; not overwriting it\n"
    assert path.read_text() == "keep me\n"


def test_keygen_reports_a_seed_file_it_cannot_create(capsys, tmp_path):
    path = tmp_path / "missing-dir" / "bootstrap.key"
    assert main(["keygen", "--seed-file", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"zajel: cannot create {path}: No such file or directory\n"


def test_keygen_prints_the_public_key_of_an_inline_seed_or_a_seed_file(capsys, tmp_path):
    seed = bytes(range(32)).hex()
    path = tmp_path / "bootstrap.key"
    path.write_text(seed.upper() + "\n")
    assert main(["keygen", "--public-key-of", seed]) == 0
    assert main(["keygen", "--public-key-of", f"@{path}"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == f"public_key={PUBLIC_KEY}\n" * 2
    assert seed not in out


@pytest.mark.parametrize("value", ["abc", "g" * 64, "@/nonexistent/zajel/seed.key", "@"])
def test_keygen_refuses_a_bad_seed_in_one_line_without_echoing_it(capsys, value):
    assert main(["keygen", "--public-key-of", value]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("zajel: --public-key-of: ")
    assert len(err.splitlines()) == 1
    if not value.startswith("@"):
        assert value not in err


def test_keygen_takes_a_seed_file_or_a_seed_not_both(capsys, tmp_path):
    with pytest.raises(SystemExit) as caught:
        main(["keygen", "--seed-file", str(tmp_path / "k"), "--public-key-of", "a" * 64])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


# -- --version, serve's --log-level, configuration errors -----------------------------------


def test_version_prints_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"zajel {importlib.metadata.version('zajel')}\n"


def test_log_level_flag_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("ZAJEL_LOG_LEVEL", "debug")
    assert serve_config(build_parser().parse_args(["serve"])).log_level == "DEBUG"
    args = build_parser().parse_args(["serve", "--log-level", "WARNING"])
    assert serve_config(args).log_level == "WARNING"


def test_serve_prints_every_configuration_error_and_exits_2(capsys, monkeypatch):
    monkeypatch.setenv("ZAJEL_PORT", "http")
    monkeypatch.setenv("ZAJEL_WS_MAX_CONNECTIONS", "0")
    assert main(["serve", "--env", "qa"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert [line.split(":")[2].strip() for line in err.splitlines()] == [
        "ZAJEL_BOOTSTRAP_SIGNING_KEY",
        "ZAJEL_ATTESTATION_SIGNING_KEY",
        "ZAJEL_PORT",
        "ZAJEL_WS_MAX_CONNECTIONS",
    ]
    assert all(line.startswith("zajel: configuration error: ") for line in err.splitlines())


# -- servers: a loopback HTTP server -------------------------------------------------------


@attrs.define
class Reply:
    status: int = 200
    headers: dict[str, str] = attrs.Factory(dict)
    body: bytes = b""


class _Server(ThreadingHTTPServer):
    # Join handler threads on close, so none outlives the test.
    daemon_threads = False
    reply: Reply
    paths: list[str]
    release: threading.Event

    def handle_error(self, request, client_address):
        pass  # a client that gave up (the timeout test) is not an error here


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self):
        self.server.paths.append(self.path)
        reply = self.server.reply
        if reply.status == 0:  # hang until the test is over
            self.server.release.wait(10)
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format, *args):
        pass  # keep the test's captured stderr for the command's own output


@attrs.define
class ListServer:
    url: str
    server: _Server

    @property
    def paths(self) -> list[str]:
        return self.server.paths

    def serve(self, reply: Reply) -> None:
        self.server.reply = reply

    def serve_list(self, entries, *, timestamp, key=KEY, header=True) -> bytes:
        body = json.dumps({"servers": entries, "timestamp": timestamp}, separators=(",", ":"))
        raw = body.encode()
        headers = {"Content-Type": "application/json"}
        if header:
            headers["X-Bootstrap-Signature"] = sign_b64(key, raw)
        self.serve(Reply(200, headers, raw))
        return raw


@pytest.fixture
def list_server(monkeypatch) -> Iterator[ListServer]:
    monkeypatch.setenv("no_proxy", "*")  # loopback only, whatever proxy the machine has
    server = _Server(("127.0.0.1", 0), _Handler)
    server.reply = Reply(404)
    server.paths = []
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield ListServer(url=f"http://{host}:{port}", server=server)
    finally:
        server.release.set()
        server.shutdown()
        thread.join(10)
        server.server_close()


@pytest.fixture
def fixed_clock(monkeypatch) -> int:
    monkeypatch.setattr(clock, "epoch_ms", lambda: NOW)
    return NOW


def servers(list_server: ListServer, *extra: str, key: str = PUBLIC_KEY) -> int:
    return main(["servers", "--url", list_server.url, "--public-key", key, *extra])


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("zajel: ")
    assert err.endswith("\n")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    return err.removeprefix("zajel: ").removesuffix("\n")


# -- servers: success ----------------------------------------------------------------------


def test_servers_prints_the_verified_list_as_a_table(capsys, list_server, fixed_clock):
    list_server.serve_list(ENTRIES, timestamp=NOW - 1_000)
    assert servers(list_server) == 0
    out, err = capsys.readouterr()
    assert err == ""
    header, first, second = out.splitlines()
    assert header.split() == [
        "serverId",
        "endpoint",
        "region",
        "connections",
        "relayConnections",
        "signalingConnections",
        "activeCodes",
        "lastSeen",
    ]
    assert first.split() == [
        "ed25519:first",
        "wss://first.example",
        "eu-west",
        "12",
        "3",
        "9",
        "4",
        "5s",
        "ago",
    ]
    assert second.split()[:2] == ["ed25519:second", "wss://second.example:8443"]
    assert second.endswith("61s ago")
    # Columns line up: every value starts under its header.
    assert first.index("wss://") == header.index("endpoint") == second.index("wss://")
    assert list_server.paths == ["/servers"]


def test_servers_prints_json(capsys, list_server, fixed_clock):
    list_server.serve_list(ENTRIES, timestamp=NOW)
    assert servers(list_server, "--json") == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out) == ENTRIES


def test_servers_says_when_the_list_is_empty(capsys, list_server, fixed_clock):
    list_server.serve_list([], timestamp=NOW)
    assert servers(list_server) == 0
    assert capsys.readouterr().out == "no servers\n"
    list_server.serve_list([], timestamp=NOW)
    assert servers(list_server, "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


def test_servers_with_the_real_clock_and_a_keygen_key(capsys, list_server):
    main(["keygen"])
    seed_line, key_line = capsys.readouterr().out.splitlines()
    key = signing_key(parse_seed(seed_line.removeprefix("seed=")))
    list_server.serve_list(ENTRIES[:1], timestamp=clock.epoch_ms(), key=key)
    assert servers(list_server, "--json", key=key_line.removeprefix("public_key=")) == 0
    assert json.loads(capsys.readouterr().out) == ENTRIES[:1]


def test_a_terminal_control_character_is_not_printed(capsys, list_server, fixed_clock):
    entry = {**ENTRIES[0], "region": "eu\x1b[2Jwest"}
    list_server.serve_list([entry], timestamp=NOW)
    assert servers(list_server) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "eu?[2Jwest" in out


@pytest.mark.parametrize(
    ("suffix", "path"),
    [
        ("", "/servers"),
        ("/", "/servers"),
        ("/servers", "/servers"),
        ("/servers/", "/servers"),
        ("/api", "/api/servers"),
        ("/api/", "/api/servers"),
    ],
)
def test_servers_url_building(capsys, list_server, fixed_clock, suffix, path):
    list_server.serve_list([], timestamp=NOW)
    url = list_server.url + suffix
    assert main(["servers", "--url", url, "--public-key", PUBLIC_KEY]) == 0
    assert list_server.paths == [path]


# -- servers: failures ---------------------------------------------------------------------


def test_a_bad_signature_fails(capsys, list_server, fixed_clock):
    list_server.serve_list(ENTRIES, timestamp=NOW, key=signing_key(generate_seed()))
    assert servers(list_server) == 1
    assert one_error_line(capsys) == "list signature does not verify with this public key"


def test_a_changed_body_fails(capsys, list_server, fixed_clock):
    raw = list_server.serve_list(ENTRIES, timestamp=NOW)
    reply = list_server.server.reply
    list_server.serve(Reply(200, reply.headers, raw.replace(b"first", b"fiRst")))
    assert servers(list_server) == 1
    assert one_error_line(capsys) == "list signature does not verify with this public key"


def test_a_stale_list_fails(capsys, list_server, fixed_clock):
    list_server.serve_list(ENTRIES, timestamp=NOW - 300_001)
    assert servers(list_server) == 1
    assert one_error_line(capsys) == "list is 300001 ms old (limit 300000 ms)"


def test_a_list_from_the_future_fails(capsys, list_server, fixed_clock):
    list_server.serve_list(ENTRIES, timestamp=NOW + 61_000)
    assert servers(list_server) == 1
    assert one_error_line(capsys) == "list is 61000 ms in the future (limit 60000 ms)"


def test_a_malformed_signed_list_fails(capsys, list_server, fixed_clock):
    raw = b'{"servers":[{"serverId":"s"}],"timestamp":%d}' % NOW
    list_server.serve(Reply(200, {"X-Bootstrap-Signature": sign_b64(KEY, raw)}, raw))
    assert servers(list_server) == 1
    assert one_error_line(capsys) == "server entry 0 has no string endpoint"


def test_a_missing_signature_header_fails(capsys, list_server, fixed_clock):
    list_server.serve_list(ENTRIES, timestamp=NOW, header=False)
    assert servers(list_server) == 1
    assert one_error_line(capsys) == "list has no X-Bootstrap-Signature header"


@pytest.mark.parametrize("status", [500, 404, 429, 204])
def test_a_status_other_than_200_fails(capsys, list_server, status):
    list_server.serve(Reply(status, {"Content-Type": "application/json"}, b""))
    assert servers(list_server) == 1
    assert one_error_line(capsys) == f"{list_server.url}/servers answered HTTP {status}"


def test_a_refused_connection_fails(capsys, list_server):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert main(["servers", "--url", url, "--public-key", PUBLIC_KEY]) == 1
    assert one_error_line(capsys) == f"cannot fetch {url}/servers: Connection refused"


def test_a_server_that_does_not_answer_times_out(capsys, list_server):
    list_server.serve(Reply(status=0))
    assert servers(list_server, "--timeout", "0.2") == 1
    assert one_error_line(capsys) == f"cannot fetch {list_server.url}/servers: timed out"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/",
        "127.0.0.1:8080",
        "",
        "file:///etc/passwd",
        "http://",
        "http://h:port/",
        "http://h:99999/",
        "http://[::1/",
        "http://a..b/",
        "https://" + "x" * 64 + ".example/",
    ],
)
def test_a_bad_url_is_a_usage_error(capsys, list_server, url):
    assert main(["servers", "--url", url, "--public-key", PUBLIC_KEY]) == 2
    assert one_error_line(capsys) == "--url must be an http or https URL with a host"


@pytest.mark.parametrize("suffix", ["/a b", "/\u00e9", "/a\tb", "/\x7f"])
def test_a_url_that_is_not_printable_ascii_is_a_usage_error(capsys, list_server, suffix):
    url = list_server.url + suffix
    assert main(["servers", "--url", url, "--public-key", PUBLIC_KEY]) == 2
    assert one_error_line(capsys) == "--url must be an http or https URL with a host"
    assert list_server.paths == []


@pytest.mark.parametrize(
    "key", ["", "not-a-key", PUBLIC_KEY[:-1], base64.b64encode(bytes(31)).decode(), "a" * 64]
)
def test_a_bad_public_key_is_a_usage_error_and_nothing_is_fetched(capsys, list_server, key):
    list_server.serve_list(ENTRIES, timestamp=NOW)
    assert servers(list_server, key=key) == 2
    assert one_error_line(capsys).startswith("--public-key: ")
    assert list_server.paths == []


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf"])
def test_a_bad_timeout_is_a_usage_error(capsys, list_server, timeout):
    assert servers(list_server, "--timeout", timeout) == 2
    assert one_error_line(capsys) == "--timeout must be a positive number of seconds"
