-- lock_account: lock an account (R7); mirrors memory_locks.LockOps.lock_account.
--
-- KEYS[1] lock:<account>  KEYS[2] locks (zset: account -> until, +inf when permanent)
-- KEYS[3] audit
-- Reply: {"ok", "1" changed or "0" a retry of the holding lock, the lock hash...}.

local lock_key, locks_key, audit_key = KEYS[1], KEYS[2], KEYS[3]
local prev = hash_of(lock_key)

local function holds(l)
  if not l.kind or (l.ended_at or "") ~= "" then
    return false
  end
  return (l.lock_until or "") == "" or NOW < tonumber(l.lock_until)
end

local function reply(changed)
  local r = { "ok", changed }
  for _, v in ipairs(redis.call("HGETALL", lock_key)) do
    r[#r + 1] = v
  end
  return r
end

local same_until = (prev.lock_until or "") == "" and P.lock_until == ""
  or (prev.lock_until or "") ~= "" and P.lock_until ~= "" and tonumber(prev.lock_until) == tonumber(P.lock_until)
if holds(prev) and prev.kind == P.kind and same_until and prev.reason == P.reason
    and prev.request_reference == P.request_reference then
  return reply("0")
end

local temporary = tonumber(prev.temporary_locks) or 0
if P.kind == "temporary" then
  temporary = temporary + 1
end
redis.call("DEL", lock_key)
redis.call("HSET", lock_key, "account_id", P.account, "kind", P.kind, "locked_at", P.now,
  "lock_until", P.lock_until, "reason", P.reason, "request_reference", P.request_reference,
  "temporary_locks", int(temporary), "ended_at", "", "unlock_reason", "")
invalidate(lock_key)
redis.call("ZREMRANGEBYSCORE", locks_key, "-inf", P.now) -- temporary locks that ran out
redis.call("ZADD", locks_key, P.lock_until == "" and "+inf" or P.lock_until, P.account)
audit(audit_key, {
  account = P.account_j, event = q("account_locked"), outcome = q("ok"), reason = P.reason_j,
  kind = q(P.kind), lock_until = P.lock_until == "" and '""' or int(tonumber(P.lock_until)),
  request = P.request_j,
})
return reply("1")
