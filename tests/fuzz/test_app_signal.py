"""Stateful fuzzing of ``/signal`` on the in-process app (``tests/fuzz/_app_machine.py``).

Several clients connect to the whole app (``zajel.asgi.AsgiApp``) and speak both dialects of
``/signal`` over ASGI WebSocket messages: pairing (register with and without a reconnect token,
pair requests answered or left to time out, offers, answers and ICE to matched and unmatched
codes) and channels (owning, subscribing, upstream messages, live streams, chunk announce,
request and push), with malformed, mistyped and unknown frames between them. Clients flood past
the rate limit, stop reading, leave with and without a close frame and come back, while the
clock jumps over the pairing, grace and channel timers.

Besides what every app machine checks, the model follows each client's code, matches,
ownerships and subscriptions from the frames it got, and after every step:

- an open connection holds at most one code, and no two hold the same one;
- a channel has at most one owner among the open connections;
- ``/stats`` counts exactly the open ``/signal`` connections, their subscriptions and the
  channels they own, and at least the codes they hold;
- a relayed signal comes only from a code the receiver was matched with.
"""

from __future__ import annotations

import base64
import json
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from tests import strategies
from tests.fuzz._app_machine import Client, HostileClients, clients, drive
from tests.fuzz._frames import SIGNAL, Schema
from tests.fuzz._settings import machine_settings
from zajel.protocol.signaling import PAIR_ANSWER_TYPES, RELAY_TYPES

CODES = ["AAAAAA", "BBBBBB", "CCCCCC", "DDDDDD"]
KEYS = [base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2, 3)]
IPS = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
CHANNELS = ["channel-a", "channel-b"]
CHUNKS = ["chunk-1", "chunk-2", "chunk-3"]
STREAMS = ["live-1", "live-2"]

codes = st.sampled_from(CODES)
keys = st.sampled_from([*KEYS, None])
channels = st.sampled_from(CHANNELS)
chunk_ids = st.sampled_from(CHUNKS)
# Jumps that cross the timers: 30 s reconnect grace, 60 s pair-request window, 90 s warning,
# 120 s pair-request lifetime, 1 s chunk_pulling, 10 s pull time-out, 5 min pending requests and
# queued upstream messages, 30 min cache, 1 h owner's hold and chunk sources.
jumps = st.sampled_from([0.001, 1.0, 2.5, 10.5, 31.0, 61.0, 91.0, 121.0, 301.0, 1801.0, 3601.0])
chunk_data = st.fixed_dictionaries({"seq": st.integers(0, 9)}) | st.text(max_size=20)


class SignalApp(HostileClients):
    SCHEMAS: ClassVar[dict[str, Schema]] = {"signal": SIGNAL}

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.ips: dict[int, str] = {}
        self.code_of: dict[int, str] = {}  # client -> the code of its last `registered`
        self.tokens: dict[str, str] = {}  # code -> its reconnect token
        self.matches: dict[str, set[str]] = {}  # code -> the codes it was ever matched with
        self.owned: dict[int, set[str]] = {}
        self.subscribed: dict[int, set[str]] = {}

    # -- the model -------------------------------------------------------------------------

    def on_frame(self, cid: int, client: Client, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "registered":
            self.code_of[cid] = frame["pairingCode"]
            self.tokens[frame["pairingCode"]] = frame["reconnectToken"]
        elif kind == "pair_matched":
            self.matches.setdefault(self.code_of[cid], set()).add(frame["peerCode"])
        elif kind in RELAY_TYPES:
            assert frame["from"] in self.matches.get(self.code_of[cid], ()), (cid, frame)
        elif kind == "channel-owner-registered":
            self.owned.setdefault(cid, set()).add(frame["channelId"])
        elif kind == "channel-subscribed":
            self.subscribed.setdefault(cid, set()).add(frame["channelId"])
        elif kind == "channel-unsubscribed":
            self.subscribed.get(cid, set()).discard(frame["channelId"])

    def on_gone(self, cid: int, client: Client) -> None:
        for table in (self.ips, self.code_of, self.owned, self.subscribed):
            table.pop(cid, None)

    def check_stats(self, stats: dict[str, Any]) -> None:
        live = [cid for cid, client in self.clients.items() if client.open]
        # A client that stopped reading has not seen all its frames (its model lags), and the
        # server may already have closed it: what follows from its frames is checked only for
        # the clients that read, and the counts are exact only when every client reads.
        sure = [cid for cid in live if not self.clients[cid].socket.paused]
        held = [self.code_of[cid] for cid in sure if cid in self.code_of]
        assert len(held) == len(set(held)), held
        owners = [channel for cid in sure for channel in self.owned.get(cid, ())]
        assert len(owners) == len(set(owners)), owners
        connections = stats["signaling"]["connections"]
        assert len(sure) <= connections <= len(self.clients), stats
        assert stats["channels"]["liveStreams"] <= stats["channels"]["owned"], stats
        if len(sure) < len(self.clients):
            return
        assert connections == len(live), stats
        assert stats["signaling"]["pairingCodes"] >= len(held), stats
        subscriptions = sum(len(self.subscribed.get(cid, ())) for cid in live)
        assert stats["channels"]["subscriptions"] == subscriptions, stats
        assert stats["channels"]["owned"] == len(owners), stats

    # -- helpers ---------------------------------------------------------------------------

    def open(self, ip: str) -> int:
        cid = self.connect("signal", ip)
        self.ips[cid] = ip
        return cid

    def reads(self, cid: int) -> bool:
        """Client ``cid`` is open, reads, and is registered."""
        client = self.clients.get(cid)
        return (
            client is not None and client.open and not client.socket.paused and cid in self.code_of
        )

    def registered(self, index: int) -> int | None:
        cids = sorted(cid for cid in self.code_of if self.clients[cid].open)
        return cids[index % len(cids)] if cids else None

    # -- pairing ---------------------------------------------------------------------------

    @initialize(ip=st.sampled_from(IPS), key=keys)
    def first_clients(self, ip: str, key: str | None) -> None:
        """Two registered clients and one that is not, to start from."""
        for code in CODES[:2]:
            self.send(
                self.open(ip),
                json.dumps({"type": "register", "pairingCode": code, "publicKey": key}),
            )
        self.open(ip)

    @precondition(lambda self: len(self.clients) < 6)
    @rule(
        ip=st.sampled_from(IPS),
        path=st.sampled_from(["/signal", "/signal/", "/signal?v=2"]),
        code=st.none() | codes,
        key=keys,
    )
    def connect_client(self, ip: str, path: str, code: str | None, key: str | None) -> None:
        """A new client, which registers at once unless ``code`` is None."""
        cid = self.connect("signal", ip, path)
        self.ips[cid] = ip
        if code is not None:
            frame = {"type": "register", "pairingCode": code, "publicKey": key}
            self.send(cid, json.dumps(frame))

    @rule(client=clients, code=codes, key=keys, token=st.sampled_from(["none", "own", "wrong"]))
    def register(self, client: int, code: str, key: str | None, token: str) -> None:
        frame: dict[str, Any] = {"type": "register", "pairingCode": code}
        if key is not None:
            frame["publicKey"] = key
        if token == "own" and code in self.tokens:
            frame["reconnectToken"] = self.tokens[code]
        elif token == "wrong":
            frame["reconnectToken"] = "not-the-token"
        self.say(client, frame)

    @rule(client=clients, to=codes, name=st.none() | st.text(max_size=20))
    def pair_request(self, client: int, to: str, name: str | None) -> None:
        frame: dict[str, Any] = {"type": "pair_request", "targetCode": to}
        if name is not None:
            frame["proposedName"] = name
        self.say(client, frame)

    @rule(
        client=clients,
        to=codes,
        kind=st.sampled_from(sorted(PAIR_ANSWER_TYPES)),
        accepted=st.booleans(),
    )
    def pair_response(self, client: int, to: str, kind: str, accepted: bool) -> None:
        self.say(client, {"type": kind, "targetCode": to, "accepted": accepted})

    @precondition(lambda self: len(self.code_of) >= 2)
    @rule(first=clients, second=clients, accept=st.booleans(), payload=strategies.call_payloads)
    def pair_up(self, first: int, second: int, accept: bool, payload: Any) -> None:
        """A pair request between two registered clients, answered at once; once matched, they
        exchange an offer, an answer and ICE candidates."""
        a, b = self.registered(first), self.registered(second)
        if a is None or b is None:
            return
        self.send(a, json.dumps({"type": "pair_request", "targetCode": self.code_of[b]}))
        if not (self.reads(a) and self.reads(b)):
            return
        frame = {"type": "pair_response", "targetCode": self.code_of[a], "accepted": accept}
        self.send(b, json.dumps(frame))
        for sender, receiver, kind in ((a, b, "offer"), (b, a, "answer"), (a, b, "ice_candidate")):
            if self.reads(sender) and self.reads(receiver):
                to = self.code_of[receiver]
                self.send(sender, json.dumps({"type": kind, "target": to, "payload": payload}))

    @rule(
        client=clients,
        kind=st.sampled_from(sorted(RELAY_TYPES)),
        to=codes,
        payload=strategies.call_payloads,
    )
    def relay(self, client: int, kind: str, to: str, payload: Any) -> None:
        self.say(client, {"type": kind, "target": to, "payload": payload})

    @precondition(lambda self: self.matches)
    @rule(
        client=clients,
        partner=clients,
        kind=st.sampled_from(sorted(RELAY_TYPES)),
        payload=strategies.call_payloads,
    )
    def relay_to_partner(self, client: int, partner: int, kind: str, payload: Any) -> None:
        """A signal to a code this client's code was matched with (it may have left since)."""
        cids = sorted(cid for cid, code in self.code_of.items() if code in self.matches)
        if not cids or not self.clients[cid := cids[client % len(cids)]].open:
            return
        targets = sorted(self.matches[self.code_of[cid]])
        frame = {"type": kind, "target": targets[partner % len(targets)], "payload": payload}
        self.send(cid, json.dumps(frame))

    @precondition(lambda self: self.code_of)
    @rule(
        client=clients,
        same_ip=st.booleans(),
        key=st.sampled_from(KEYS),
        code=st.sampled_from([1000, 1006]),
    )
    def reconnect(self, client: int, same_ip: bool, key: str, code: int) -> None:
        """A registered client's connection ends and it comes back with its code's token."""
        cid = self.registered(client)
        if cid is None:
            return
        pairing_code, ip = self.code_of[cid], self.ips[cid]
        self.disconnect(cid, code)
        new = self.open(ip if same_ip else IPS[(IPS.index(ip) + 1) % len(IPS)])
        frame = {"type": "register", "pairingCode": pairing_code, "publicKey": key}
        if pairing_code in self.tokens:
            frame["reconnectToken"] = self.tokens[pairing_code]
        self.send(new, json.dumps(frame))

    # -- channels --------------------------------------------------------------------------

    @rule(
        client=clients,
        kind=st.sampled_from(
            ["channel-owner-register", "channel-subscribe", "channel-unsubscribe"]
        ),
        channel=channels,
    )
    def channel(self, client: int, kind: str, channel: str) -> None:
        self.say(client, {"type": kind, "channelId": channel})

    @rule(
        client=clients, channel=channels, message=strategies.json_objects, key=st.sampled_from(KEYS)
    )
    def upstream(self, client: int, channel: str, message: dict[str, Any], key: str) -> None:
        frame = {
            "type": "upstream-message",
            "channelId": channel,
            "message": message,
            "ephemeralPublicKey": key,
        }
        self.say(client, frame)

    @rule(
        client=clients,
        kind=st.sampled_from(["stream-start", "stream-frame", "stream-end"]),
        channel=channels,
        stream=st.sampled_from(STREAMS),
        frame=strategies.json_values,
    )
    def stream(self, client: int, kind: str, channel: str, stream: str, frame: Any) -> None:
        self.say(
            client,
            {"type": kind, "channelId": channel, "streamId": stream, "title": "t", "frame": frame},
        )

    @rule(client=clients, channel=channels, chunks=st.lists(chunk_ids, min_size=1, max_size=3))
    def chunk_announce(self, client: int, channel: str, chunks: list[str]) -> None:
        entries = [{"chunkId": chunk, "routingHash": "route"} for chunk in chunks]
        self.say(client, {"type": "chunk_announce", "channelId": channel, "chunks": entries})

    @rule(client=clients, channel=channels, chunk=chunk_ids)
    def chunk_request(self, client: int, channel: str, chunk: str) -> None:
        self.say(client, {"type": "chunk_request", "channelId": channel, "chunkId": chunk})

    @rule(client=clients, channel=channels, chunk=chunk_ids, data=chunk_data)
    def chunk_push(self, client: int, channel: str, chunk: str, data: Any) -> None:
        self.say(
            client, {"type": "chunk_push", "channelId": channel, "chunkId": chunk, "data": data}
        )

    @precondition(lambda self: len(self.code_of) >= 2)
    @rule(
        owner=clients,
        follower=clients,
        channel=channels,
        chunk=chunk_ids,
        stream=st.sampled_from(STREAMS),
        data=chunk_data,
    )
    def publish(
        self, owner: int, follower: int, channel: str, chunk: str, stream: str, data: Any
    ) -> None:
        """The apps' flow: a client owns a channel, another follows it; the owner streams a
        frame and announces a chunk, the follower asks for it and the owner answers the pull."""
        a, b = self.registered(owner), self.registered(follower)
        if a is None or b is None:
            return
        self.send(a, json.dumps({"type": "channel-owner-register", "channelId": channel}))
        for frame in (
            {"type": "channel-subscribe", "channelId": channel},
            {"type": "stream-start", "channelId": channel, "streamId": stream},
            {"type": "stream-frame", "channelId": channel, "streamId": stream, "frame": data},
            {"type": "chunk_announce", "channelId": channel, "chunks": [{"chunkId": chunk}]},
            {"type": "chunk_request", "channelId": channel, "chunkId": chunk},
        ):
            sender = b if frame["type"] in ("channel-subscribe", "chunk_request") else a
            if sender in self.clients and self.clients[sender].open:
                self.send(sender, json.dumps(frame))
        self.sources_answer_pulls(data)

    @rule(data=chunk_data)
    def sources_answer_pulls(self, data: Any) -> None:
        """Every client that was pulled for a chunk pushes it, as a real source does."""
        for cid, client in list(self.clients.items()):
            pulls = [frame for frame in client.frames if frame["type"] == "chunk_pull"]
            client.frames.clear()
            for pull in pulls:
                if cid in self.clients and self.clients[cid].open:
                    push = {"type": "chunk_push", "chunkId": pull["chunkId"], "data": data}
                    if "channelId" in pull:
                        push["channelId"] = pull["channelId"]
                    self.send(cid, json.dumps(push))

    # -- hostile clients (floods, stalls and departures: HostileClients) -------------------

    @rule(client=clients, data=strategies.frames)
    def garbage(self, client: int, data: str | bytes) -> None:
        """Malformed JSON, binary, not an object, no or a non-string type."""
        self.say(client, data)

    @rule(client=clients, frame=strategies.signal_objects | strategies.channel_objects)
    def any_object(self, client: int, frame: dict[str, Any]) -> None:
        """Known and unknown types with fields of any value and type."""
        self.say(client, frame)

    @rule(seconds=jumps)
    def time_passes(self, seconds: float) -> None:
        self.jump(seconds)


SETTINGS = machine_settings(examples=25, steps=30)


async def test_signal_on_the_app(mock_clock, tmp_path, restore_logging):
    await drive(SignalApp, mock_clock, tmp_path, SETTINGS)
