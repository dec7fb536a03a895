-- check_code: count the attempt, compare in constant time, consume; P1, P2. The attestation,
-- R1 and P8 and their records are PostgreSQL's step (pair.py, xacthuc_issue_phone),
-- idempotent on the challenge id.
--
-- KEYS[1] c:<record name> (records.py challenge_record; P.tail: the rest of the id)
-- Reply: {"ok", phone} on the right code (also on a consumed challenge: the same call
-- retried, no attempt counted), {"gone"} when there is no such challenge (PostgreSQL may
-- hold what it issued: a retry after a lost reply), or a refusal.
--
-- The number's state is named by stored state the caller cannot know, so it is built here
-- (number_prefix); it carries the number's tag, as the challenge's record does (the id
-- carries it), so the two live in one slot.

local ch_key = KEYS[1]
local L = P.limits

local c = challenge_of(ch_key, P.tail) or {}

local function refuse(reason, phone_j, retry_after)
  audit({
    account = P.account_j, event = q("check_failed"), outcome = q("refused"),
    reason = q(reason), challenge = P.challenge_j, phone = phone_j or '""',
  })
  return refusal(reason, retry_after)
end

local expires_at = c.expires_at
if not expires_at or NOW >= expires_at + L.challenge_retention_seconds then
  return { "gone" }
end
if not for_account(c) then
  return refuse("CHALLENGE_ACCOUNT_MISMATCH", c.phone_j)
end
if c.state == "consumed" then
  -- The right code again (no attempt counted) is the same call retried: PostgreSQL answers
  -- with what the challenge issued, or refuses.
  if mac_matches(c.mac, P.candidates) then
    return { "ok", c.phone }
  end
  return refuse("CHALLENGE_ALREADY_USED", c.phone_j)
end
if NOW >= expires_at then
  return refuse("OTP_EXPIRED", c.phone_j)
end
local attempts = c.attempts
if attempts >= L.otp_max_attempts then
  return refuse("OTP_ATTEMPTS_EXCEEDED", c.phone_j)
end
local ph_key = number_prefix(c.phone) .. "p:" .. c.phone
local ph = phone_of(ph_key)
local fails, level, locked_until = ph.fails, ph.level, ph.locked_until
if locked_until > NOW then
  return refuse("PHONE_LOCKED", c.phone_j, fmt(locked_until - NOW))
end

attempts = attempts + 1 -- counted before comparing
set_challenge_attempts(ch_key, attempts)

if not mac_matches(c.mac, P.candidates) then
  fails = fails + 1
  local remaining = int(L.otp_max_attempts - attempts)
  local failed = {
    account = P.account_j, event = q("check_failed"), outcome = q("failed"),
    reason = q("OTP_INCORRECT"), challenge = P.challenge_j, phone = c.phone_j,
    attempts_remaining = remaining,
  }
  if fails >= L.phone_max_failures then
    level = level + 1
    local seconds = math.floor(math.min(
      L.phone_lock_base_seconds * 2 ^ math.max(0, level - 1), L.phone_lock_max_seconds))
    locked_until = NOW + seconds
    ph.fails, ph.level, ph.locked_until = 0, level, locked_until
    put_phone(ph_key, ph)
    audit(failed)
    audit({
      account = P.account_j, event = q("phone_locked"), outcome = q("locked"),
      reason = q("PHONE_LOCKED"), phone = c.phone_j, lock_seconds = int(seconds),
      lock_level = int(level),
    })
    return refusal("PHONE_LOCKED", fmt(seconds))
  end
  ph.fails = fails
  put_phone(ph_key, ph)
  audit(failed)
  return refusal("OTP_INCORRECT", "", remaining)
end

-- The right code: the challenge is used up and P2 starts afresh.
set_challenge_state(ch_key, "consumed")
ph.fails, ph.level = 0, 0
put_phone(ph_key, ph)
return { "ok", c.phone }
