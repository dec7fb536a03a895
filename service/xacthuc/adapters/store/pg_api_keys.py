"""The PostgreSQL API key store (`xacthuc.ports.api_keys`; issue 10): what every replica
accepts, managed from the shell (`xacthuc keys create|revoke|list`) without a restart, and
kept in the system of record, so no key and no revocation is lost with Redis.

Table `api_keys` (migration 0003): one row per key, the SHA-256 of its secret (never the
key), and `version`, the number of the key's latest change. Create and revoke are each one
statement, one round trip (`xacthuc_create_api_key`, `xacthuc_revoke_api_key`): the key's row
and its audit record (`api_key_created`, `api_key_revoked`, in the platform's audit log kept
in PostgreSQL, rendered by `xacthuc_audit` as every store renders it) commit together or not
at all. Versions
are handed out in commit order (the migration says how), so a poll, `changes_since`, is one
indexed query: the store's version and the keys changed after the caller's.

PostgreSQL out of reach: StoreUnavailable (`Database`), nothing written. Mirrors
`memory_api_keys.py`.
"""

from __future__ import annotations

import asyncpg

from xacthuc.adapters.store.pg_state import time_j
from xacthuc.adapters.store.postgres import Database
from xacthuc.domain.api_keys import (
    ApiKeyChanges,
    ApiKeyExists,
    ApiKeyNotFound,
    StoredApiKey,
    check_new_key,
    check_revoke_reason,
)

_KEYS = (
    "SELECT key_id, platform, role, sha256, created_at, label, revoked_at, revoke_reason"
    " FROM api_keys"
)
_REVOKE = (
    "SELECT key_id, platform, role, sha256, created_at, label, revoked_at, revoke_reason"
    " FROM xacthuc_revoke_api_key($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)

# The store's version and the keys changed after $1, in the order of their change; all of
# them when $1 is 0 or above the store's version (a database restored from an older backup:
# the caller then replaces its table). One row of NULL key columns when none changed.
_CHANGES = (
    "SELECT h.version AS head, k.key_id, k.platform, k.role, k.sha256, k.created_at, k.label,"
    " k.revoked_at, k.revoke_reason"
    " FROM (SELECT coalesce(max(version), 0) AS version FROM api_keys) AS h"
    " LEFT JOIN api_keys AS k"
    " ON k.version > CASE WHEN $1 <= h.version THEN $1 ELSE 0 END"
    " ORDER BY k.version"
)


def _key(r: asyncpg.Record) -> StoredApiKey:
    return StoredApiKey(
        key_id=r["key_id"],
        platform=r["platform"],
        role=r["role"],
        sha256=bytes(r["sha256"]).hex(),
        created_at=float(r["created_at"]),
        label=r["label"],
        revoked_at=None if r["revoked_at"] is None else float(r["revoked_at"]),
        revoke_reason=r["revoke_reason"],
    )


class PostgresApiKeyStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(self, key: StoredApiKey) -> int:
        check_new_key(key)
        if key.revoked_at is not None:
            raise ValueError("a new key is not revoked")
        async with self._db.connection() as conn:
            version = await conn.fetchval(
                "SELECT xacthuc_create_api_key($1, $2, $3, $4, $5, $6, $7)",
                key.key_id,
                key.platform,
                key.role,
                bytes.fromhex(key.sha256),
                key.created_at,
                key.label,
                time_j(key.created_at),
            )
        if version is None:
            raise ApiKeyExists(key.key_id)
        return int(version)

    async def revoke(
        self, key_id: str, at: float, reason: str, *, fallback: StoredApiKey | None = None
    ) -> StoredApiKey:
        check_revoke_reason(reason)
        if fallback is not None and fallback.key_id != key_id:
            fallback = None  # another key's entry is no fallback for this one
        if fallback is not None:
            check_new_key(fallback)
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                _REVOKE,
                key_id,
                at,
                reason,
                time_j(at),
                None if fallback is None else fallback.platform,
                None if fallback is None else fallback.role,
                None if fallback is None else bytes.fromhex(fallback.sha256),
                None if fallback is None else fallback.created_at,
                None if fallback is None else fallback.label,
            )
        if row is None:
            raise ApiKeyNotFound(key_id)
        return _key(row)

    async def list(self, platform: str | None = None) -> list[StoredApiKey]:
        async with self._db.connection() as conn:
            if platform is None:
                rows = await conn.fetch(_KEYS + " ORDER BY created_at, key_id")
            else:
                rows = await conn.fetch(
                    _KEYS + " WHERE platform = $1 ORDER BY created_at, key_id", platform
                )
        return [_key(r) for r in rows]

    async def changes_since(self, version: int) -> ApiKeyChanges:
        version = int(version)
        async with self._db.connection() as conn:
            rows = await conn.fetch(_CHANGES, version)
        head = int(rows[0]["head"])
        keys = tuple(_key(r) for r in rows if r["key_id"] is not None)
        return ApiKeyChanges(head, keys, version <= 0 or version > head)
