"""A small trio client for the server, shared by tests, benchmarks and users.

Every wait for a frame is bounded (``DEFAULT_TIMEOUT_S`` unless the client or the call says
otherwise) and raises ``ReplyTimeout`` naming what it awaited; frames the server pushes while a
request waits for its reply are set aside, never dropped. ``RelayClient`` speaks ``/relay``;
``SignalClient`` speaks ``/signal``, pairing and the channel dialect of the apps.
"""

from zajel.client._socket import DEFAULT_TIMEOUT_S, JsonSocket, ReplyTimeout, ServerError
from zajel.client.relay import RelayClient, connect_relay
from zajel.client.signal import (
    ChunkUnavailable,
    SignalClient,
    connect_signal,
    generate_public_key,
    pair,
    random_pairing_code,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ChunkUnavailable",
    "JsonSocket",
    "RelayClient",
    "ReplyTimeout",
    "ServerError",
    "SignalClient",
    "connect_relay",
    "connect_signal",
    "generate_public_key",
    "pair",
    "random_pairing_code",
]
