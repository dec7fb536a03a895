-- unlock_account: lift the account's lock that holds now (R7); mirrors
-- memory_locks.LockOps.unlock_account.
--
-- KEYS[1] lock:<account>  KEYS[2] locks  KEYS[3] audit
-- Reply: {"ok", the lifted lock hash...}, or {"ok"} when no lock holds (nothing changed).

local lock_key, locks_key, audit_key = KEYS[1], KEYS[2], KEYS[3]
local l = hash_of(lock_key)
if not l.kind or (l.ended_at or "") ~= "" or ((l.lock_until or "") ~= "" and NOW >= tonumber(l.lock_until)) then
  return { "ok" }
end
redis.call("HSET", lock_key, "ended_at", P.now, "unlock_reason", P.reason)
invalidate(lock_key)
redis.call("ZREM", locks_key, P.account)
audit(audit_key, {
  account = P.account_j, event = q("account_unlocked"), outcome = q("ok"), reason = P.reason_j,
  kind = q(l.kind),
})
local r = { "ok" }
for _, v in ipairs(redis.call("HGETALL", lock_key)) do
  r[#r + 1] = v
end
return r
