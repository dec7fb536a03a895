-- begin_id_check: refuse a locked or over-budget account or number, or a livestream upgrade
-- of an account that cannot have it; otherwise count the attempt. Issue 3 "no oracle", R3, R4.
--
-- KEYS[1] idg:acct:<account>  KEYS[2] idatt:acct:<account>
-- KEYS[3] idg:id:<number>     KEYS[4] idatt:id:<number>
-- Reply: {"ok"} or a refusal. Every check comes before the first write. The account's
-- attestation and links are PostgreSQL's facts, read before this step (pair.py): P.facts
-- active, managed (its attestation), linked (R1: a linked child).

local L = P.limits
local HOUR = 3600

local function record(outcome, reason)
  audit({
    account = P.account_j, event = q("id_check_started"), outcome = q(outcome),
    reason = q(reason), attempt = P.attempt_j, personal_id = P.subject_j, client = P.client_j,
    purpose = P.purpose_j, id_type = P.id_type_j,
  })
end

local function refuse(reason, retry_after, extra)
  record("refused", reason)
  return refusal(reason, retry_after, extra)
end

local scopes = {
  { "account", KEYS[1], KEYS[2], L.id_attempts_per_account_hour },
  { "personal_id", KEYS[3], KEYS[4], L.id_attempts_per_number_hour },
}
for _, s in ipairs(scopes) do
  local locked_until = tonumber(redis.call("HGET", s[2], "locked_until")) or 0
  if locked_until > NOW then
    return refuse("ID_ATTEMPTS_EXCEEDED", fmt(locked_until - NOW), s[1])
  end
end
for _, s in ipairs(scopes) do
  redis.call("ZREMRANGEBYSCORE", s[3], "-inf", fmt(NOW - HOUR))
  local n = redis.call("ZCARD", s[3])
  if n >= s[4] then
    local oldest = redis.call("ZRANGE", s[3], n - s[4], n - s[4], "WITHSCORES")
    return refuse("ID_ATTEMPTS_EXCEEDED", fmt(tonumber(oldest[2]) + HOUR - NOW), s[1])
  end
end
local F = P.facts
if P.purpose == "commercial_livestream" then
  if F.active ~= "1" then
    return refuse("ACCOUNT_NOT_AUTHENTICATED")
  end
  if F.managed == "1" then
    return refuse("GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM")
  end
elseif F.linked == "1" then
  return refuse("GUARDIAN_REQUIRED") -- R1: a linked child verifies through the guardian
end

for _, s in ipairs(scopes) do
  redis.call("ZADD", s[3], fmt(NOW), P.attempt_id)
  redis.call("PEXPIRE", s[3], ms_until(NOW + HOUR))
end
record("ok", "")
return { "ok" }
