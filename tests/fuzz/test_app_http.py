"""Stateful fuzzing of the HTTP routes on the in-process app (``tests/fuzz/_app_machine.py``).

Relay operators register, beat and unregister VPS servers and read the signed list; the release
pipeline uploads references; devices register with good, forged and stale build tokens, ask for
challenges and answer them with the genuine binary or a modified one. Between them, requests of
any method to any route with any body, any ``Authorization`` and any ``Content-Type``; the clock
jumps over the server entries' 5 minutes, the nonces' 5 minutes and the sweeps.

Besides what every app machine checks, after every step:

- every response is JSON with the common headers; an error is ``{"error": <text>}`` with a
  status the contract names, never 500;
- the model predicts the status of every structured request (a live or expired server, a
  registered device, an open or used nonce, a reference or none) and the reply agrees;
- ``GET /servers`` is signed with the server's key and lists exactly the live entries, each as
  last registered; a heartbeat's ``peers`` are the other live entries; a verified device's
  session token verifies with the attestation key;
- ``/stats`` counts the live servers, the devices and the references exactly.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar
from urllib.parse import quote

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from tests import strategies
from tests.fuzz._app_machine import AppMachine, drive
from tests.fuzz._inprocess import HttpReply
from tests.fuzz._settings import machine_settings
from tests.integration.test_attestation_http import (
    ATTESTATION_SEED,
    BINARY,
    CI_SECRET,
    PIPELINE_SEED,
    PLATFORM,
)
from zajel import crypto
from zajel.attestation import (
    answer_challenge,
    make_reference,
    sign_build_token,
    verify_session_token,
)
from zajel.bootstrap import SIGNATURE_HEADER, verify_server_list
from zajel.clock import epoch_ms

BOOTSTRAP_SEED = bytes(range(1, 33))
REGISTRY_SECRET = "registry-secret"
BEARER = {"registry": REGISTRY_SECRET, "ci": CI_SECRET}
IPS = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
SERVER_IDS = ["vps-eu-1", "ed25519:us1/Ab+c=", "relay.local_2"]
DEVICES = ["pixel-7a", "iphone_15", "desk.top-1"]
VERSIONS = ["1.2.0", "1.3.0"]
REGION = re.compile(r"[A-Za-z0-9._-]{1,64}")
SERVER_TTL_S = 300.0
NONCE_TTL_S = 300.0
MODIFIED = bytes(byte ^ 0xFF for byte in BINARY)
# Statuses the contract names for these routes (docs/protocol/servers.md, attestation.md,
# conventions.md "Over HTTP").
STATUSES = {200, 400, 401, 403, 404, 405, 413, 429, 503}
ROUTES = [
    "/",
    "/api/info",
    "/health",
    "/stats",
    "/servers",
    "/servers/heartbeat",
    "/servers/vps-eu-1",
    "/servers/",
    "/servers/a/b",
    "/servers/%ZZ",
    "/attest/register",
    "/attest/upload-reference",
    "/attest/challenge",
    "/attest/verify",
    "/attest/versions",
    "/nowhere",
    "/signal",
]

counters = st.fixed_dictionaries(
    {},
    optional={
        name: st.integers(-5, 10**6) | st.floats(0, 100) | strategies.json_scalars
        for name in ("connections", "relayConnections", "signalingConnections", "activeCodes")
    },
)
bodies = (
    st.builds(lambda value: json.dumps(value).encode(), strategies.json_values)
    | strategies.frame_texts.map(lambda text: text.encode("utf-8", "surrogatepass"))
    | st.binary(max_size=64)
    | st.just(b"x" * 70_000)
)


class HttpApp(AppMachine):
    SETTINGS: ClassVar[dict[str, Any]] = {
        "bootstrap_signing_key": BOOTSTRAP_SEED.hex(),
        "attestation_signing_key": ATTESTATION_SEED.hex(),
        "build_token_verify_key": crypto.public_key_b64(crypto.signing_key(PIPELINE_SEED)),
        "server_registry_secret": REGISTRY_SECRET,
        "ci_upload_secret": CI_SECRET,
    }

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.servers: dict[str, tuple[float, dict[str, Any]]] = {}  # id -> (last beat, entry)
        self.devices: dict[str, str] = {}  # device -> version it registered with
        self.references: set[str] = set()  # versions with a reference (one platform)
        self.nonces: dict[str, tuple[str, float, dict[str, Any]]] = {}  # nonce -> device, when
        self.used: list[dict[str, Any]] = []  # challenges already answered

    # -- helpers ---------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: str | None = None,
        ip: str = IPS[0],
        raw: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> HttpReply:
        """One request; the reply is checked against the contract's common rules."""
        given = list(headers or [])
        if auth is not None:
            given.append(("authorization", f"Bearer {BEARER.get(auth, auth)}"))
        if raw is None:
            raw = b"" if body is None else json.dumps(body).encode()
            given.append(("content-type", "application/json"))
        reply = self.bridge.run(lambda: self.app.request(method, path, raw, ip=ip, headers=given))
        assert reply.status in STATUSES, (method, path, reply.status, reply.body)
        assert reply.headers.get("x-content-type-options") == "nosniff", reply.headers
        assert reply.headers.get("cache-control") == "no-store", reply.headers
        if method == "OPTIONS" or path == "/metrics":
            return reply
        assert reply.headers["content-type"].startswith("application/json"), reply.headers
        payload = reply.json()
        if reply.status >= 400:
            assert isinstance(payload, dict), payload
            assert isinstance(payload.get("error"), str), payload
        return reply

    def live(self) -> dict[str, dict[str, Any]]:
        return {
            sid: entry
            for sid, (beat, entry) in self.servers.items()
            if self.now - beat < SERVER_TTL_S
        }

    def near_expiry(self) -> bool:
        """A server entry or a nonce is within a second of its end: its fate is not predicted."""
        beats = [beat + SERVER_TTL_S for beat, _ in self.servers.values()]
        issued = [when + NONCE_TTL_S for _, when, _ in self.nonces.values()]
        return any(abs(end - self.now) < 1.0 for end in beats + issued)

    def open_nonces(self, device: str) -> int:
        return sum(
            1
            for owner, when, _ in self.nonces.values()
            if owner == device and self.now - when <= NONCE_TTL_S
        )

    # -- the server registry ---------------------------------------------------------------

    @rule(
        sid=st.sampled_from(SERVER_IDS),
        region=st.sampled_from(["eu-west", "", "x" * 65]) | strategies.json_scalars,
        extra=counters,
        auth=st.sampled_from(["registry", "registry", "wrong", None]),
    )
    def register_server(
        self, sid: str, region: Any, extra: dict[str, Any], auth: str | None
    ) -> None:
        body = {
            "serverId": sid,
            "endpoint": f"wss://relay-{SERVER_IDS.index(sid)}.example.com/ws",
            "publicKey": "cHVibGlj",
            "region": region,
            **extra,
        }
        reply = self.call("POST", "/servers", body, auth=auth)
        if auth != "registry":
            assert reply.status == 401, reply
            return
        assert reply.status == 200, reply
        entry = reply.json()["server"]
        assert (entry["serverId"], entry["endpoint"]) == (sid, body["endpoint"]), entry
        valid_region = isinstance(region, str) and REGION.fullmatch(region)
        assert entry["region"] == (region if valid_region else "unknown"), entry
        self.servers[sid] = (self.now, entry)

    @rule(sid=st.sampled_from(SERVER_IDS), extra=counters)
    def heartbeat(self, sid: str, extra: dict[str, Any]) -> None:
        reply = self.call("POST", "/servers/heartbeat", {"serverId": sid, **extra}, auth="registry")
        if self.near_expiry():
            # Whether an entry within a second of its end was live, the reply says.
            if reply.status == 200:
                self.servers[sid] = (self.now, self.servers[sid][1])
            else:
                self.servers.pop(sid, None)
            return
        live = self.live()
        if sid not in live:
            assert reply.status == 404, reply
            return
        assert reply.status == 200, reply
        peers = {peer["serverId"] for peer in reply.json()["peers"]}
        assert peers == set(live) - {sid}, (peers, live)
        self.servers[sid] = (self.now, self.servers[sid][1])

    @rule(sid=st.sampled_from(SERVER_IDS), encode=st.booleans())
    def unregister(self, sid: str, encode: bool) -> None:
        path = "/servers/" + (quote(sid, safe="") if encode else sid)
        reply = self.call("DELETE", path, auth="registry")
        if encode or "/" not in sid:
            assert reply.status == 200, reply
            self.servers.pop(sid, None)
        else:
            assert reply.status == 400, reply  # a raw "/" is not an id

    @rule()
    def signed_list(self) -> None:
        reply = self.call("GET", "/servers")
        assert reply.status == 200, reply
        stamp = reply.json()["timestamp"]
        public_key = crypto.public_key_b64(crypto.signing_key(BOOTSTRAP_SEED))
        listed = verify_server_list(
            reply.body, reply.headers.get(SIGNATURE_HEADER.lower()), public_key, now_ms=stamp
        )
        if self.near_expiry():
            return
        live = self.live()
        assert {entry["serverId"] for entry in listed} == set(live), (listed, live)
        for entry in listed:
            stored = live[entry["serverId"]]
            assert {k: entry[k] for k in ("endpoint", "publicKey", "region")} == {
                k: stored[k] for k in ("endpoint", "publicKey", "region")
            }

    # -- attestation -----------------------------------------------------------------------

    @rule(version=st.sampled_from(VERSIONS), auth=st.sampled_from(["ci", "ci", "registry"]))
    def upload_reference(self, version: str, auth: str) -> None:
        body = make_reference(BINARY, version=version, platform=PLATFORM, regions=8)
        reply = self.call("POST", "/attest/upload-reference", body, auth=auth)
        if auth != "ci":
            assert reply.status == 401, reply
            return
        assert reply.status == 200, reply
        self.references.add(version)
        # A new reference replaces the old one: the open challenges of that version asked for
        # regions it may no longer hold, and their answers fail.
        for nonce, (device, when, issued) in self.nonces.items():
            if issued["version"] == version:
                self.nonces[nonce] = (device, when, {**issued, "replaced": True})

    @rule(
        device=st.sampled_from(DEVICES),
        version=st.sampled_from(VERSIONS),
        token=st.sampled_from(["good", "good", "forged", "stale", "future"]),
        ip=st.sampled_from(IPS),
    )
    def register_device(self, device: str, version: str, token: str, ip: str) -> None:
        seed = bytes(32) if token == "forged" else PIPELINE_SEED
        offset_ms = {"stale": -31 * 86_400_000, "future": 86_400_000}.get(token, 0)
        build_token = sign_build_token(
            seed,
            version=version,
            platform=PLATFORM,
            build_hash="sha256-of-the-build",
            # The server's clock runs ahead of the wall clock by the jumps so far.
            timestamp_ms=epoch_ms() + int(self.now * 1000) + offset_ms,
        )
        body = {"device_id": device, "build_token": build_token}
        reply = self.call("POST", "/attest/register", body, ip=ip)
        expected = {"good": 200, "forged": 403, "stale": 403, "future": 403}[token]
        assert reply.status == expected, reply
        if reply.status == 200:
            assert reply.json()["device"]["device_id"] == device
            self.devices[device] = version

    @rule(device=st.sampled_from(DEVICES), version=st.sampled_from(VERSIONS))
    def challenge(self, device: str, version: str) -> None:
        body = {"device_id": device, "build_version": version}
        reply = self.call("POST", "/attest/challenge", body)
        if self.near_expiry():
            return
        if device not in self.devices:
            assert reply.status == 404, reply
        elif self.devices[device] != version:
            assert reply.status == 403, reply
        elif self.open_nonces(device) >= 5:
            assert reply.status == 429, reply
        elif version not in self.references:
            assert reply.status == 404, reply
        else:
            assert reply.status == 200, reply
            issued = reply.json()
            self.nonces[issued["nonce"]] = (device, self.now, {**issued, "version": version})

    @precondition(lambda self: self.nonces or self.used)
    @rule(
        pick=st.integers(0, 100),
        answer=st.sampled_from(["genuine", "genuine", "modified", "another device", "used"]),
    )
    def verify(self, pick: int, answer: str) -> None:
        if answer == "used" and self.used:
            issued = self.used[pick % len(self.used)]
            body = answer_challenge(BINARY, issued, device_id=issued["device"])
            assert self.call("POST", "/attest/verify", body).status == 403
            return
        if not self.nonces:
            return
        nonce = sorted(self.nonces)[pick % len(self.nonces)]
        device, when, issued = self.nonces[nonce]
        # Modified: every byte differs (a zeroed copy would still match the binary's own
        # zero-filled regions).
        data = BINARY if answer != "modified" else MODIFIED
        claimed = device if answer != "another device" else device + "x"
        body = answer_challenge(data, issued, device_id=claimed)
        reply = self.call("POST", "/attest/verify", body)
        if abs(self.now - when - NONCE_TTL_S) < 1.0:
            self.nonces.pop(nonce)
            return
        if self.now - when > NONCE_TTL_S:
            assert reply.status == 403, reply  # expired (or swept)
            self.nonces.pop(nonce)
            return
        if answer == "another device":
            assert reply.status == 403, reply  # the nonce stays usable by its device
            return
        self.nonces.pop(nonce)
        self.used.append({**issued, "device": device})
        assert reply.status == 200, reply
        result = reply.json()
        if issued.get("replaced"):
            assert result["valid"] is False, result
            return
        if answer == "modified":
            assert result == {"valid": False, "error": "HMAC mismatch"}, result
            return
        assert result["valid"] is True, result
        key = crypto.public_key_b64(crypto.signing_key(ATTESTATION_SEED))
        now_ms = epoch_ms() + int(self.now * 1000)
        claims = verify_session_token(result["session_token"], key, now_ms=now_ms)
        assert claims.device_id == device, claims
        assert claims.build_version in (issued["version"], self.devices[device]), claims

    # -- anything at all -------------------------------------------------------------------

    @rule(
        method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]),
        path=st.sampled_from(ROUTES),
        body=bodies,
        auth=st.sampled_from(["registry", "ci", "wrong", None]),
        content_type=st.sampled_from(["application/json", "text/plain", None]),
        ip=st.sampled_from(IPS),
    )
    def any_request(
        self,
        method: str,
        path: str,
        body: bytes,
        auth: str | None,
        content_type: str | None,
        ip: str,
    ) -> None:
        """Any method on any route with any body: a documented status and a JSON error, never
        a failure. What it may have changed is read back from the server."""
        headers = [("content-type", content_type)] if content_type else []
        if method == "HEAD":
            return  # no body to check
        self.call(method, path, auth=auth, raw=body, headers=headers, ip=ip)
        if method != "GET":
            self.resync()

    def resync(self) -> None:
        """After a request the model did not build: take the registry from the signed list
        (its entries are fresh as of now, at the latest), and the devices it may have added."""
        reply = self.call("GET", "/servers")
        listed = {entry["serverId"]: entry for entry in reply.json()["servers"]}
        for sid in list(self.servers):
            if sid not in listed:
                del self.servers[sid]
        for sid, entry in listed.items():
            if sid not in self.servers:
                self.servers[sid] = (self.now, entry)

    @rule(seconds=st.sampled_from([1.5, 61.0, 299.5, 301.0, 3601.0]))
    def time_passes(self, seconds: float) -> None:
        self.jump(seconds)

    # -- checks ----------------------------------------------------------------------------

    def check_stats(self, stats: dict[str, Any]) -> None:
        if not self.near_expiry():
            assert stats["servers"]["liveServers"] == len(self.live()), (stats, self.servers)
        assert stats["attestation"]["devices"] == len(self.devices), stats
        assert stats["attestation"]["references"] == len(self.references), stats


SETTINGS = machine_settings(examples=20, steps=30)


async def test_http_on_the_app(mock_clock, tmp_path, restore_logging):
    await drive(HttpApp, mock_clock, tmp_path, SETTINGS)
