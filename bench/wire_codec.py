"""What one message between nodes costs the codec: ``zajel.cluster.wire`` on typical values.

Every request a node sends another, and every reply, goes through ``dumps`` on one side and
``loads`` on the other, so this is CPU on the path of every cross-node message. Measured in one
process, without Redis or sockets, on three values made the way the server makes them:

- ``offer``: the ``Inbound`` the front end casts to the SignalingRoom for an ``offer`` frame
  with a ``--sdp``-character SDP, decoded by ``zajel.protocol.signaling.decode``, with the
  sender's ``Identity``;
- ``register_server``: the ``RegisterServer`` request of a ``POST /servers`` body, decoded by
  ``zajel.protocol.servers.decode_register``;
- ``registered``: the ServerRegistry's reply to it, ``Registered(entry)``.

For each: µs per ``dumps`` then ``loads`` (the round trip), µs per ``dumps`` and per ``loads``
alone, and the message's size in bytes; the best of ``--repeat`` passes of ``--rounds`` each (the
machine's noise only ever adds). Every round trip is checked to give back an equal value.

Run from the repository root::

    python bench/wire_codec.py --rounds 20000

Output: one JSON line on stdout, also appended to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import orjson  # noqa: E402

from bench._server import emit, run_facts  # noqa: E402
from zajel.cluster import wire  # noqa: E402
from zajel.protocol import servers, signaling  # noqa: E402
from zajel.protocol.servers import Counters, ServerEntry  # noqa: E402
from zajel.services import servers as registry  # noqa: E402
from zajel.services._peers import Identity, Inbound  # noqa: E402

PUBLIC_KEY = "Jk0mCUEw6oSLzVbVtEq7j3sC7I3Y8mZcLh0v9tJ6tXk="


def sdp(size: int) -> str:
    """An SDP offer of about ``size`` characters: a data channel's lines, then candidates."""
    lines = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:Zq3x",
        "a=ice-pwd:7yV0wRk8mA2pNs4bQe6tUj1h",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + ":".join(f"{i:02X}" for i in range(32)),
        "a=setup:actpass",
        "a=mid:0",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
    ]
    index = 0
    while sum(len(line) + 2 for line in lines) < size:
        lines.append(
            f"a=candidate:{index} 1 udp 2122260223 192.168.1.{index % 250} {50000 + index}"
            " typ host generation 0 network-id 1"
        )
        index += 1
    return "\r\n".join(lines) + "\r\n"


def values(sdp_size: int) -> dict[str, Any]:
    """The measured values, made by the server's own decoders."""
    frame = orjson.dumps(
        {
            "type": "offer",
            "target": "K7MPQ2",
            "payload": {"sdp": sdp(sdp_size), "type": "offer"},
        }
    ).decode()
    offer = signaling.decode(frame)
    assert isinstance(offer, signaling.Relay), offer
    body = orjson.dumps(
        {
            "serverId": "vps-eu-west-17",
            "endpoint": "wss://relay17.example.org:443/ws",
            "publicKey": PUBLIC_KEY,
            "region": "eu-west",
            "connections": 120,
            "relayConnections": 80,
            "signalingConnections": 40,
            "activeCodes": 35,
        }
    )
    request = servers.decode_register(body, allow_private=False)
    entry = ServerEntry(
        request.server_id,
        request.endpoint,
        request.public_key,
        request.region,
        Counters(120, 80, 40, 35),
        1_790_000_000_000,
        1_790_000_123_456,
    )
    return {
        "offer": Inbound(41, offer, Identity("signal", "H4RW9C", PUBLIC_KEY)),
        "register_server": request,
        "registered": registry.Registered(entry),
    }


def best_us(work: Callable[[], None], rounds: int, repeat: int) -> float:
    """The least wall time ``work`` took over ``repeat`` passes of ``rounds`` calls, in µs per
    call."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(rounds):
            work()
        best = min(best, time.perf_counter() - started)
    return round(best / rounds * 1e6, 3)


def measure(value: Any, rounds: int, repeat: int) -> dict[str, Any]:
    data = wire.dumps(value)
    if wire.loads(data) != value:
        raise SystemExit(f"round trip changed {type(value).__name__}")
    dumps, loads = wire.dumps, wire.loads
    return {
        "bytes": len(data),
        "round_trip_us": best_us(lambda: loads(dumps(value)), rounds, repeat),
        "dumps_us": best_us(lambda: dumps(value), rounds, repeat),
        "loads_us": best_us(lambda: loads(data), rounds, repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="calls per pass (20000)")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best counts (5)")
    parser.add_argument("--sdp", type=int, default=1500, help="characters of SDP (1500)")
    parser.add_argument("--out", type=Path, default=SCRIPT.parent / "results" / "wire_codec.jsonl")
    args = parser.parse_args()
    results = {
        name: measure(value, args.rounds, args.repeat) for name, value in values(args.sdp).items()
    }
    emit(
        {
            "benchmark": "wire_codec",
            "rounds": args.rounds,
            "sdp_chars": args.sdp,
            **results,
            **run_facts(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
