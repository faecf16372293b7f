"""Ed25519 signing, session tokens, HMAC: thin over pynacl and the standard library."""

from zajel.crypto.keys import (
    PUBLIC_KEY_BYTES,
    SEED_BYTES,
    SIGNATURE_BYTES,
    InvalidKey,
    generate_seed,
    load_seed,
    parse_public_key,
    parse_seed,
    public_key_b64,
    sign_b64,
    signing_key,
    verify_b64,
)

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "InvalidKey",
    "generate_seed",
    "load_seed",
    "parse_public_key",
    "parse_seed",
    "public_key_b64",
    "sign_b64",
    "signing_key",
    "verify_b64",
]
