-- locked_status_indexes: the status-list indexes of every token issued to an account whose
-- lock holds now (R7); reads only. Mirrors memory_locks.LockOps.locked_status_indexes.
--
-- KEYS[1] locks (zset: account -> until, +inf when permanent)
-- Reply: {"ok", index...}. An unlocked account is not in the zset; one whose temporary lock
-- ran out scores at or below now.

local r = { "ok" }
for _, account in ipairs(redis.call("ZRANGEBYSCORE", KEYS[1], "(" .. P.now, "+inf")) do
  for _, idx in ipairs(redis.call("SMEMBERS", PREFIX .. "acctsl:" .. account)) do
    r[#r + 1] = idx
  end
end
return r
