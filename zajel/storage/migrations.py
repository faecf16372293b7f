"""The schema, as numbered migrations (``docs/operations.md``, "Storage").

The first four mirror the original server's Durable Object migrations: v1 SignalingRoom and
v2 RelayRegistry keep no durable state (their migrations only hold the place of the number),
v3 ServerRegistry, v4 AttestationRegistry. Later changes append migrations; a migration that
has shipped is never edited. The version a database is at is SQLite's ``user_version``.
"""

from __future__ import annotations

from typing import Final

import attrs


@attrs.frozen
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: Final = (
    Migration(1, "SignalingRoom: live state only", ()),
    Migration(2, "RelayRegistry: live state only", ()),
    Migration(
        3,
        "ServerRegistry: servers",
        (
            """CREATE TABLE servers (
                server_id TEXT PRIMARY KEY,
                endpoint TEXT NOT NULL,
                public_key TEXT NOT NULL,
                region TEXT NOT NULL,
                connections INTEGER NOT NULL,
                relay_connections INTEGER NOT NULL,
                signaling_connections INTEGER NOT NULL,
                active_codes INTEGER NOT NULL,
                registered_at INTEGER NOT NULL,
                last_seen INTEGER NOT NULL
            ) STRICT""",
        ),
    ),
    Migration(
        4,
        "AttestationRegistry: devices, references, nonces, version policy",
        (
            # Records are JSON objects, as the original kept them; the columns beside them are
            # what lookups and sweeps select on.
            """CREATE TABLE attestation_devices (
                device_id TEXT PRIMARY KEY,
                last_seen INTEGER NOT NULL,
                record TEXT NOT NULL
            ) STRICT""",
            "CREATE INDEX attestation_devices_last_seen ON attestation_devices (last_seen)",
            """CREATE TABLE attestation_references (
                version TEXT NOT NULL,
                platform TEXT NOT NULL,
                record TEXT NOT NULL,
                PRIMARY KEY (version, platform)
            ) STRICT""",
            """CREATE TABLE attestation_nonces (
                nonce TEXT PRIMARY KEY,
                device_id TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                record TEXT NOT NULL
            ) STRICT""",
            "CREATE INDEX attestation_nonces_device ON attestation_nonces (device_id)",
            "CREATE INDEX attestation_nonces_created ON attestation_nonces (created_at)",
            """CREATE TABLE attestation_policy (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                record TEXT NOT NULL
            ) STRICT""",
        ),
    ),
)
