"""The in-process API key store (`xacthuc.ports.api_keys`): the embedded default, for dev and
tests. It lives inside one server process, so only that process sees its changes; keys
shared by replicas and managed from the shell live in PostgreSQL (`pg_api_keys.py`).

Each write checks everything, appends its audit record to the store's audit log, then
changes the table, with no suspension point in between: atomic on one event loop, like
MemoryStore. `pg_api_keys.py` mirrors it in SQL.
"""

from __future__ import annotations

from dataclasses import replace

from xacthuc.domain.api_keys import (
    API_KEY_CREATED,
    API_KEY_REVOKED,
    ApiKeyChanges,
    ApiKeyExists,
    ApiKeyNotFound,
    StoredApiKey,
    check_new_key,
    check_revoke_reason,
)
from xacthuc.ports.store import Store


class MemoryApiKeyStore:
    def __init__(self, audit: Store) -> None:
        """`audit`: the store whose audit log records the changes (a MemoryStore)."""
        self._audit = audit
        self._keys: dict[str, StoredApiKey] = {}
        self._changed: dict[str, int] = {}  # key id -> version of its latest change
        self._version = 0

    def _put(self, key: StoredApiKey) -> int:
        self._version += 1
        self._keys[key.key_id] = key
        self._changed[key.key_id] = self._version
        return self._version

    async def create(self, key: StoredApiKey) -> int:
        check_new_key(key)
        if key.revoked_at is not None:
            raise ValueError("a new key is not revoked")
        if key.key_id in self._keys:
            raise ApiKeyExists(key.key_id)
        await self._audit.append_audit(
            key.platform,
            key.created_at,
            account="",
            event=API_KEY_CREATED,
            outcome="ok",
            key_id=key.key_id,
            role=key.role,
        )
        return self._put(key)

    async def revoke(
        self, key_id: str, at: float, reason: str, *, fallback: StoredApiKey | None = None
    ) -> StoredApiKey:
        check_revoke_reason(reason)
        key = self._keys.get(key_id)
        if key is None:
            if fallback is None or fallback.key_id != key_id:
                raise ApiKeyNotFound(key_id)
            key = check_new_key(replace(fallback, revoked_at=None, revoke_reason=""))
        if key.revoked:
            return key
        await self._audit.append_audit(
            key.platform,
            at,
            account="",
            event=API_KEY_REVOKED,
            outcome="ok",
            reason=reason,
            key_id=key.key_id,
            role=key.role,
        )
        revoked = replace(key, revoked_at=at, revoke_reason=reason)
        self._put(revoked)
        return revoked

    async def list(self, platform: str | None = None) -> list[StoredApiKey]:
        keys = [k for k in self._keys.values() if platform is None or k.platform == platform]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    async def changes_since(self, version: int) -> ApiKeyChanges:
        full = version <= 0 or version > self._version
        keys = tuple(
            self._keys[key_id]
            for key_id, changed in sorted(self._changed.items(), key=lambda kv: kv[1])
            if full or changed > version
        )
        return ApiKeyChanges(self._version, keys, full)
