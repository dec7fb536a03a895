-- start_challenge: idempotency, R1 (no linked child), P2 lock, P8 accounts, P3 cooldown and
-- budgets, then create. A key naming a challenge whose code was sent replays it; one still
-- "sending" is START_IN_PROGRESS within the send lease, and abandoned (undone, audited
-- `code_send_abandoned`) after it, so the retry starts afresh.
--
-- KEYS[1] ch:<id>            KEYS[2] ph:<phone>           KEYS[3] sends:ph:<phone>
-- KEYS[4] sends:platform     KEYS[5] sends:ip:<client>    KEYS[6] phacct:<phone>
-- KEYS[7] audit              KEYS[8] idem:<key> (only when the platform sent a key)
-- Reply: {"ok"|"replay", challenge id, expires_at, resend_not_before} or a refusal.

local ch_key, ph_key, sends_phone, sends_platform, sends_client, accounts_key, audit_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local idem_key = KEYS[8]
local L = P.limits

local function refuse(reason, retry_after, extra)
  audit(audit_key, {
    account = P.account_j, event = q("verification_started"), outcome = q("refused"),
    reason = q(reason), phone = P.phone_j, client = P.client_j, method = q("phone_otp"),
  })
  return refusal(reason, retry_after, extra)
end

if idem_key then
  local existing = redis.call("GET", idem_key)
  if existing then
    -- The key names an earlier challenge whose id only the stored value knows, so its key is
    -- built here; it shares the {platform} hash tag, hence the slot, of every key above.
    local e = hash_of(PREFIX .. "ch:" .. existing)
    if e.expires_at and tonumber(e.expires_at) > NOW then
      if e.fingerprint ~= P.fingerprint then
        return refuse("IDEMPOTENCY_KEY_REUSED")
      end
      if e.state ~= "sending" then -- only a code that was sent is replayed
        return { "replay", existing, e.expires_at, e.resend_not_before }
      end
      if NOW < tonumber(e.created) + L.send_lease_seconds then
        return refuse("START_IN_PROGRESS", "1")
      end
      -- Its start died before confirming the send: forget it, start afresh.
      unsend(existing, e.challenge_j or q(existing), e, "code_send_abandoned", audit_key)
    end
  end
end

if linked_child(P.account) then -- R1: a linked child verifies through the guardian
  return refuse("GUARDIAN_REQUIRED")
end
local phone = redis.call("HMGET", ph_key, "locked_until", "last_send")
local locked_until = tonumber(phone[1]) or 0
if locked_until > NOW then
  return refuse("PHONE_LOCKED", fmt(locked_until - NOW))
end
if redis.call("SISMEMBER", accounts_key, P.account) == 0
    and redis.call("SCARD", accounts_key) >= L.max_accounts_per_phone then
  return refuse("PHONE_ACCOUNT_LIMIT")
end
local last_send = tonumber(phone[2])
if last_send and last_send + L.resend_cooldown_seconds > NOW then
  return refuse("RESEND_TOO_SOON", fmt(last_send + L.resend_cooldown_seconds - NOW))
end

local budgets = {
  { "phone_15m", sends_phone, 900, L.sends_per_phone_15m },
  { "phone_day", sends_phone, DAY, L.sends_per_phone_day },
  { "platform_hour", sends_platform, 3600, L.sends_per_platform_hour },
  { "client_ip_hour", sends_client, 3600, L.sends_per_client_ip_hour },
}
for _, b in ipairs(budgets) do
  local scope, key, window, limit = b[1], b[2], b[3], b[4]
  local since = "(" .. fmt(NOW - window) -- sends strictly after now - window count
  local count = redis.call("ZCOUNT", key, since, "+inf")
  if count >= limit then
    -- The budget frees up when the limit-th most recent send leaves the window.
    local oldest = redis.call("ZRANGEBYSCORE", key, since, "+inf", "WITHSCORES",
      "LIMIT", count - limit, 1)
    return refuse("SEND_LIMIT_EXCEEDED", fmt(tonumber(oldest[2]) + window - NOW), scope)
  end
end

local resend_not_before = fmt(NOW + L.resend_cooldown_seconds)
local keep = ms_until(tonumber(P.expires_at) + L.challenge_retention_seconds)
redis.call("DEL", ch_key)
redis.call("HSET", ch_key,
  "challenge_j", P.challenge_j,
  "account", P.account, "account_j", P.account_j, "phone", P.phone, "phone_j", P.phone_j,
  "client", P.client, "mac", P.code_mac, "idempotency_key", P.idempotency_key,
  "fingerprint", P.fingerprint, "created", P.now, "expires_at", P.expires_at,
  "resend_not_before", resend_not_before, "attempts", "0", "state", "sending")
redis.call("PEXPIRE", ch_key, keep)
if idem_key then
  redis.call("SET", idem_key, P.challenge_id, "PX", keep)
end
redis.call("HSET", ph_key, "last_send", P.now)
keep_phone(ph_key, locked_until)
for _, w in ipairs({ { sends_phone, DAY }, { sends_platform, 3600 }, { sends_client, 3600 } }) do
  redis.call("ZREMRANGEBYSCORE", w[1], "-inf", fmt(NOW - w[2]))
  redis.call("ZADD", w[1], P.now, P.challenge_id)
  redis.call("PEXPIRE", w[1], w[2] * 1000)
end
audit(audit_key, {
  account = P.account_j, event = q("verification_started"), outcome = q("ok"),
  challenge = P.challenge_j, phone = P.phone_j, client = P.client_j, method = q("phone_otp"),
})
return { "ok", P.challenge_id, P.expires_at, resend_not_before }
