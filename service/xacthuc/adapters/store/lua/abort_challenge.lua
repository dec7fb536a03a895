-- abort_challenge: the gateway refused the SMS; undo the start as if it never happened.
--
-- KEYS[1] ch:<id>   KEYS[2] sends:platform   KEYS[3] audit
-- Reply: {"ok"} (also when there is nothing to abort).
--
-- The caller knows only the challenge id, so the keys named by the challenge (its phone, its
-- client bucket, its idempotency key) are built here from PREFIX and the stored pseudonyms.
-- They carry the same {platform} hash tag as KEYS, so they live in the same cluster slot.

local ch_key, sends_platform, audit_key = KEYS[1], KEYS[2], KEYS[3]
local c = redis.call("HMGET", ch_key,
  "state", "account_j", "phone", "phone_j", "client", "idempotency_key")
if c[1] ~= "sending" then
  return { "ok" }
end
local phone, client, idem = c[3], c[5], c[6]
redis.call("DEL", ch_key)
if idem ~= "" then
  local idem_key = PREFIX .. "idem:" .. idem
  if redis.call("GET", idem_key) == P.challenge_id then
    redis.call("DEL", idem_key)
  end
end
local sends_phone = PREFIX .. "sends:ph:" .. phone
redis.call("ZREM", sends_phone, P.challenge_id)
redis.call("ZREM", sends_platform, P.challenge_id)
redis.call("ZREM", PREFIX .. "sends:ip:" .. client, P.challenge_id)
-- The cooldown runs from the latest send that is left (none: no cooldown).
local ph_key = PREFIX .. "ph:" .. phone
local latest = redis.call("ZRANGE", sends_phone, -1, -1, "WITHSCORES")
if latest[2] then
  redis.call("HSET", ph_key, "last_send", latest[2])
  keep_phone(ph_key, tonumber(redis.call("HGET", ph_key, "locked_until")) or 0)
else
  redis.call("HDEL", ph_key, "last_send")
end
audit(audit_key, {
  account = c[2], event = q("code_send_failed"), outcome = q("failed"),
  reason = q("SMS_DELIVERY_FAILED"), challenge = P.challenge_j, phone = c[4],
})
return { "ok" }
