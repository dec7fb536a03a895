"""The Redis API key store (`xacthuc.ports.api_keys`): what every replica accepts, managed
from the shell (`xacthuc keys create|revoke|list`) without a restart.

Key layout, under the hash tag `{_apikeys}` (no platform id starts with `_`):

    <ns>:{_apikeys}:key:<key id>   hash: key_id, platform, role, sha256 (of the secret),
                                   created_at, label, revoked_at, revoke_reason, version
    <ns>:{_apikeys}:changes        zset: key id scored by the version of its latest change
    <ns>:{_apikeys}:version        string: the table's version, INCR by every change

Each write is one Lua script (`lua/api_key_create.lua`, `lua/api_key_revoke.lua`) that also
appends the audit record to `<ns>:{<platform>}:audit`, in the same atomic step (with the
audit log in PostgreSQL, issue 10, it hands the record back and the call returns once
PostgreSQL stored it, as RedisStore's scripts do). That script
touches two hash tags: fine on one Redis server (with replicas or Sentinel), not on Redis
Cluster. Servers poll `lua/api_key_changes.lua`: one round trip returning the version and
only the keys changed since theirs. Mirrors `memory_api_keys.py`.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from xacthuc.adapters.store.redis import (
    _UNAVAILABLE,
    AuditSink,
    LuaScript,
    RawJson,
    _j,
    _lua,
    _pairs,
    _text,
    _time,
    run_script,
    without_retries,
)
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
from xacthuc.domain.clock import rfc3339
from xacthuc.domain.errors import StoreUnavailable
from xacthuc.domain.records import audit_record, split_audit_record

TAG = "{_apikeys}"


def _key(h: dict[str, str]) -> StoredApiKey:
    revoked_at = h.get("revoked_at", "")
    return StoredApiKey(
        key_id=h["key_id"],
        platform=h["platform"],
        role=h["role"],
        sha256=h["sha256"],
        created_at=float(h["created_at"]),
        label=h.get("label", ""),
        revoked_at=float(revoked_at) if revoked_at else None,
        revoke_reason=h.get("revoke_reason", ""),
    )


class RedisApiKeyStore:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        namespace: str,
        once_client: aioredis.Redis | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        """`client` and `namespace`: those of the RedisStore whose audit log records the
        changes (decode_responses on). The writes (create, revoke) run on `once_client`,
        each sent once however `client` retries (`without_retries(client)` when not
        given); the read of changes keeps `client`'s retries. `audit`: the RedisStore's
        audit sink when its log is kept in PostgreSQL."""
        self._audit_sink = audit
        self._redis = client
        self._once = once_client if once_client is not None else without_retries(client)
        self._namespace = namespace
        self._base = f"{namespace}:{TAG}:"
        self._create = LuaScript(_lua("api_key_create"))
        self._revoke = LuaScript(_lua("api_key_revoke"))
        self._changes = LuaScript(_lua("api_key_changes", prelude=False))

    def _keys(self, key_id: str, platform: str) -> list[str]:
        return [
            f"{self._base}key:{key_id}",
            f"{self._base}changes",
            f"{self._base}version",
            f"{self._namespace}:{{{platform}}}:audit",
        ]

    @staticmethod
    def _audit(key: StoredApiKey, at: float, event: str, reason: str = "") -> dict[str, str]:
        """The audit record, rendered around its sequence number (as RedisStore does)."""
        head, tail = split_audit_record(
            audit_record(
                seq=0,
                now=at,
                platform=key.platform,
                account="",
                event=event,
                outcome="ok",
                reason=reason,
                key_id=key.key_id,
                role=key.role,
            )
        )
        return {"head": head, "tail": tail, "time_j": _j(rfc3339(at)), "now": _time(at)}

    @staticmethod
    def _fields(key: StoredApiKey) -> dict[str, str]:
        return {
            "key_id": key.key_id,
            "platform": key.platform,
            "role": key.role,
            "sha256": key.sha256,
            "created_at": _time(key.created_at),
            "label": key.label,
        }

    async def _run(self, script: LuaScript, keys: list[str], params: dict[str, Any]) -> list[str]:
        """One script, as RedisStore runs its own (`run_script`): with an audit sink, refused
        while it is known down, and the record it wrote stored there before the call returns."""
        if self._audit_sink is not None:
            params = params | {"outbox": RawJson("true")}
        return await run_script(script, self._once, keys, params, self._audit_sink)

    async def create(self, key: StoredApiKey) -> int:
        check_new_key(key)
        if key.revoked_at is not None:
            raise ValueError("a new key is not revoked")
        params = self._fields(key) | self._audit(key, key.created_at, API_KEY_CREATED)
        reply = await self._run(self._create, self._keys(key.key_id, key.platform), params)
        if reply[0] == "err":
            raise ApiKeyExists(key.key_id)
        return int(reply[1])

    async def _get(self, key_id: str) -> StoredApiKey | None:
        try:
            raw = await self._redis.hgetall(f"{self._base}key:{key_id}")
        except _UNAVAILABLE as e:
            raise StoreUnavailable() from e
        h = {_text(k): _text(v) for k, v in raw.items()}
        return _key(h) if h else None

    async def revoke(
        self, key_id: str, at: float, reason: str, *, fallback: StoredApiKey | None = None
    ) -> StoredApiKey:
        check_revoke_reason(reason)
        key = await self._get(key_id)
        if key is None:
            if fallback is None or fallback.key_id != key_id:
                raise ApiKeyNotFound(key_id)
            key = check_new_key(fallback)
        if key.revoked:
            return key
        params = (
            self._fields(key)
            | self._audit(key, at, API_KEY_REVOKED, reason)
            | {"reason": reason, "fallback": "1" if fallback is not None else "0"}
        )
        reply = await self._run(self._revoke, self._keys(key_id, key.platform), params)
        if reply[0] == "err":
            if reply[1] == "not_found":
                raise ApiKeyNotFound(key_id)
            raise ValueError(f"key {key_id} is stored for another platform or role")
        return _key(_pairs(reply[2:]))

    async def list(self, platform: str | None = None) -> list[StoredApiKey]:
        keys = (await self.changes_since(0)).keys
        found = [k for k in keys if platform is None or k.platform == platform]
        return sorted(found, key=lambda k: (k.created_at, k.key_id))

    async def changes_since(self, version: int) -> ApiKeyChanges:
        try:
            reply = await self._changes.run(
                self._redis,
                [f"{self._base}changes", f"{self._base}version"],
                [str(int(version)), f"{self._base}key:"],
            )
        except _UNAVAILABLE as e:
            raise StoreUnavailable() from e
        keys = tuple(_key(_pairs([_text(x) for x in flat])) for flat in reply[2:] if flat)
        return ApiKeyChanges(int(_text(reply[0])), keys, _text(reply[1]) == "1")
