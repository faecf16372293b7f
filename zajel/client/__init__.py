"""A small trio client for the server, shared by tests, benchmarks and users."""

from zajel.client._socket import JsonSocket, ServerError
from zajel.client.relay import RelayClient, connect_relay
from zajel.client.signal import (
    SignalClient,
    connect_signal,
    generate_public_key,
    pair,
    random_pairing_code,
)

__all__ = [
    "JsonSocket",
    "RelayClient",
    "ServerError",
    "SignalClient",
    "connect_relay",
    "connect_signal",
    "generate_public_key",
    "pair",
    "random_pairing_code",
]
