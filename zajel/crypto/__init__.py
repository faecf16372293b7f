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
from zajel.crypto.tokens import (
    b64url_decode,
    b64url_encode,
    decode_signature,
    hex_equal,
    hmac_sha256_hex,
    open_token,
    sign_token,
    verify_detached,
)

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "InvalidKey",
    "b64url_decode",
    "b64url_encode",
    "decode_signature",
    "generate_seed",
    "hex_equal",
    "hmac_sha256_hex",
    "load_seed",
    "open_token",
    "parse_public_key",
    "parse_seed",
    "public_key_b64",
    "sign_b64",
    "sign_token",
    "signing_key",
    "verify_b64",
    "verify_detached",
]
