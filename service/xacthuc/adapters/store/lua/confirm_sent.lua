-- confirm_sent: the gateway accepted the SMS; a "sending" challenge becomes "pending".
--
-- KEYS[1] ch:<id>   KEYS[2] audit
-- Reply: {"ok"} (also when there is nothing to confirm).

local ch_key, audit_key = KEYS[1], KEYS[2]
local c = redis.call("HMGET", ch_key, "state", "account_j", "phone_j")
if c[1] ~= "sending" then
  return { "ok" }
end
redis.call("HSET", ch_key, "state", "pending")
audit(audit_key, {
  account = c[2], event = q("code_sent"), outcome = q("ok"), challenge = P.challenge_j,
  phone = c[3],
})
return { "ok" }
