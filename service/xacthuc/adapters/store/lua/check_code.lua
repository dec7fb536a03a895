-- check_code: count the attempt, compare in constant time, consume, attest; P1, P2, P8.
--
-- KEYS[1] c:<id's first 14 characters> (P.tail: the rest)   KEYS[2] acct:<account>   KEYS[3] audit
-- Reply: {"ok", method, token_id, verified_at, issued_at, expires_at, status_idx} or a refusal.
-- Single use: a consumed challenge refuses even the right code (CHALLENGE_ALREADY_USED).
-- An account with an active guardian link (a child under 16) is refused (GUARDIAN_REQUIRED).
--
-- The phone's keys (p:<phone>, phacct:<phone>, and phacct:<previous phone> of an account
-- that moves) are named by stored state the caller cannot know, so they are built here from
-- PREFIX; they carry the same {platform} hash tag as KEYS, so they live in the same slot.

local ch_key, acct_key, audit_key = KEYS[1], KEYS[2], KEYS[3]
local L = P.limits
local a = P.attestation

local c = challenge_of(ch_key, P.tail) or {}

local function refuse(reason, phone_j, retry_after)
  audit(audit_key, {
    account = P.account_j, event = q("check_failed"), outcome = q("refused"),
    reason = q(reason), challenge = P.challenge_j, phone = phone_j or '""',
  })
  return refusal(reason, retry_after)
end

local expires_at = c.expires_at
if not expires_at or NOW >= expires_at + L.challenge_retention_seconds then
  if P.pair then -- PostgreSQL may hold what the challenge issued (a retry after a lost reply)
    return { "gone" }
  end
  return refuse("CHALLENGE_NOT_FOUND")
end
if not for_account(c) then
  return refuse("CHALLENGE_ACCOUNT_MISMATCH", c.phone_j)
end
if c.state == "consumed" then
  -- In the pair, the right code again (no attempt counted) is the same call retried:
  -- PostgreSQL answers with what the challenge issued, or refuses.
  if P.pair and mac_matches(c.mac, P.candidates) then
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
local ph_key = PREFIX .. "p:" .. c.phone
local ph = phone_of(ph_key)
local fails, level, locked_until = ph.fails, ph.level, ph.locked_until
if locked_until > NOW then
  return refuse("PHONE_LOCKED", c.phone_j, fmt(locked_until - NOW))
end
-- R1: a linked child verifies through the guardian (in the pair: decided by PostgreSQL)
if not P.pair and linked_child(P.account) then
  return refuse("GUARDIAN_REQUIRED", c.phone_j)
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
    audit(audit_key, failed)
    audit(audit_key, {
      account = P.account_j, event = q("phone_locked"), outcome = q("locked"),
      reason = q("PHONE_LOCKED"), phone = c.phone_j, lock_seconds = int(seconds),
      lock_level = int(level),
    })
    return refusal("PHONE_LOCKED", fmt(seconds))
  end
  ph.fails = fails
  put_phone(ph_key, ph)
  audit(audit_key, failed)
  return refusal("OTP_INCORRECT", "", remaining)
end

if P.pair then
  -- The right code: the challenge is used up and P2 starts afresh; the attestation, R1, P8
  -- and the records are PostgreSQL's step (xacthuc_issue_phone), idempotent on the id.
  set_challenge_state(ch_key, "consumed")
  ph.fails, ph.level = 0, 0
  put_phone(ph_key, ph)
  return { "ok", c.phone }
end

local accounts_key = PREFIX .. "phacct:" .. c.phone
if redis.call("SISMEMBER", accounts_key, P.account) == 0
    and redis.call("SCARD", accounts_key) >= L.max_accounts_per_phone then
  return refuse("PHONE_ACCOUNT_LIMIT", c.phone_j)
end

set_challenge_state(ch_key, "consumed")
ph.fails, ph.level = 0, 0 -- success resets P2
put_phone(ph_key, ph)
local idx = int(next_status_idx())
attest(acct_key, P.account, c.phone, {
  "account_id", P.account, "method", a.method, "token_id", a.token_id, "verified_at", P.now,
  "issued_at", a.issued_at, "expires_at", a.expires_at, "status", "active",
  "guardian_managed", "0", "commercial_livestream", "0", "phone", c.phone,
  "age_band", a.age_band, "status_idx", idx, "token_id_j", a.token_id_j,
})
audit(audit_key, {
  account = P.account_j, event = q("check_ok"), outcome = q("ok"), challenge = P.challenge_j,
  phone = c.phone_j,
})
audit(audit_key, {
  account = P.account_j, event = q("attestation_issued"), outcome = q("ok"),
  token_id = a.token_id_j, method = a.method_j, expires = a.expires,
})
return { "ok", a.method, a.token_id, P.now, a.issued_at, a.expires_at, idx }
