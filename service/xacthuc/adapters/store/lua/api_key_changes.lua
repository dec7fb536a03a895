-- api_key_changes: the key table's version and every key changed after ARGV[1] (read only,
-- no prelude); mirrors memory_api_keys.MemoryApiKeyStore.changes_since.
--
-- KEYS[1] <ns>:{_apikeys}:changes (zset: key id scored by the version of its latest change)
-- KEYS[2] <ns>:{_apikeys}:version  ARGV[1] the caller's version  ARGV[2] "<ns>:{_apikeys}:key:"
-- Every key hash shares the {_apikeys} hash tag, so they live in the same slot as KEYS.
-- From version 0, or one above the store's (a store that lost its data), all keys: "full".
-- Reply: {version, "1" full or "0", {hash...}, {hash...}, ...} in the order of their change.

local version = tonumber(redis.call("GET", KEYS[2]) or "0")
local since = tonumber(ARGV[1])
local full = "0"
if since <= 0 or since > version then
  since = 0
  full = "1"
end
local r = { string.format("%d", version), full }
for _, id in ipairs(redis.call("ZRANGEBYSCORE", KEYS[1], "(" .. string.format("%d", since), "+inf")) do
  r[#r + 1] = redis.call("HGETALL", ARGV[2] .. id)
end
return r
