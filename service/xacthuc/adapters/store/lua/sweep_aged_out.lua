-- sweep_aged_out: end up to P.limit links whose child turned 16 at or before now (P6).
--
-- KEYS[1] agingout  KEYS[2] audit
-- Reply: {"ok", count}. Oldest birthdays first, ties in member byte order (as in memory).
-- The attestation issued under each link gets status "aged_out": its token expired at the
-- birthday already, so no status bit is set.

local aging_key, audit_key = KEYS[1], KEYS[2]
local due = redis.call("ZRANGEBYSCORE", aging_key, "-inf", P.now, "LIMIT", 0, P.limit)
for _, child in ipairs(due) do
  local link_id = redis.call("GET", PREFIX .. "childlink:" .. child)
  if link_id then
    local l = hash_of(PREFIX .. "link:" .. link_id)
    end_link(l, "aged_out", q("aged_out"), audit_key)
    local c_key = PREFIX .. "acct:" .. child
    local c = redis.call("HMGET", c_key, "link_id", "status")
    if c[1] == link_id and c[2] == "active" then
      redis.call("HSET", c_key, "status", "aged_out")
      invalidate(c_key)
    end
  else -- not reachable: every indexed child has its pointer
    redis.call("ZREM", aging_key, child)
  end
end
return { "ok", int(#due) }
