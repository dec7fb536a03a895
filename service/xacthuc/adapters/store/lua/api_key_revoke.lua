-- api_key_revoke: revoke a platform API key, bump the key table's version and append the
-- `api_key_revoked` record to the platform's audit log, in one atomic step; mirrors
-- memory_api_keys.MemoryApiKeyStore.revoke.
--
-- KEYS[1] <ns>:{_apikeys}:key:<id>  KEYS[2] <ns>:{_apikeys}:changes  KEYS[3] <ns>:{_apikeys}:version
-- KEYS[4] <ns>:{<platform>}:audit
-- Python read the key first (its platform names the audit list and its role is in the
-- rendered record): the script checks both are still what Python saw. When the key is not
-- stored and P.fallback is "1", the key in P (from the read-only keys file) is stored first,
-- so it is recorded revoked. Reply: {"ok", "1" (revoked now) or "0" (already), hash...}, or
-- {"err", "not_found"} / {"err", "changed"}.

local key_key, changes_key, version_key, audit_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local k = hash_of(key_key)
if not k.key_id then
  if P.fallback ~= "1" then
    return { "err", "not_found" }
  end
  redis.call(
    "HSET", key_key, "key_id", P.key_id, "platform", P.platform, "role", P.role,
    "sha256", P.sha256, "created_at", P.created_at, "label", P.label
  )
  k = hash_of(key_key)
end
if k.platform ~= P.platform or k.role ~= P.role then
  return { "err", "changed" }
end
local now_revoked = "0"
if (k.revoked_at or "") == "" then
  now_revoked = "1"
  local version = redis.call("INCR", version_key)
  redis.call(
    "HSET", key_key, "revoked_at", P.now, "revoke_reason", P.reason, "version", int(version)
  )
  redis.call("ZADD", changes_key, version, P.key_id)
  audit_rendered(audit_key) -- or into OUTBOX (the audit log kept in PostgreSQL)
end
local r = { "ok", now_revoked }
for _, v in ipairs(redis.call("HGETALL", key_key)) do
  r[#r + 1] = v
end
return r
