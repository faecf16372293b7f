"""A small trio client for the server, shared by tests, benchmarks and users."""

from zajel.client.signal import (
    ServerError,
    SignalClient,
    connect_signal,
    generate_public_key,
    pair,
    random_pairing_code,
)

__all__ = [
    "ServerError",
    "SignalClient",
    "connect_signal",
    "generate_public_key",
    "pair",
    "random_pairing_code",
]
