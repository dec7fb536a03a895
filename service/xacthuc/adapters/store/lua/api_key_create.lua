-- api_key_create: store a new platform API key, bump the key table's version and append the
-- `api_key_created` record to the platform's audit log, in one atomic step; mirrors
-- memory_api_keys.MemoryApiKeyStore.create.
--
-- KEYS[1] <ns>:{_apikeys}:key:<id>  KEYS[2] <ns>:{_apikeys}:changes  KEYS[3] <ns>:{_apikeys}:version
-- KEYS[4] <ns>:{<platform>}:audit
-- The audit record arrives rendered around its sequence number (P.head .. seq .. P.tail), as
-- for append_audit.lua. Reply: {"ok", version} or {"err", "exists"}.

local key_key, changes_key, version_key, audit_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call("EXISTS", key_key) == 1 then
  return { "err", "exists" }
end
local version = redis.call("INCR", version_key)
redis.call(
  "HSET", key_key, "key_id", P.key_id, "platform", P.platform, "role", P.role,
  "sha256", P.sha256, "created_at", P.created_at, "label", P.label, "version", int(version)
)
redis.call("ZADD", changes_key, version, P.key_id)
audit_rendered(audit_key) -- or into OUTBOX (the audit log kept in PostgreSQL)
return { "ok", int(version) }
