-- start_challenge: idempotency, R1 (no linked child), P2 lock, P8 accounts, P3 cooldown and
-- budgets, then create. R1 and P8 are PostgreSQL's facts, read before this step (pair.py):
-- P.facts.linked (a linked child), P.facts.full (no room for the account on the number). A key naming a challenge whose code was sent replays it; one still
-- "sending" is START_IN_PROGRESS within the send lease, and abandoned (undone, audited
-- `code_send_abandoned`) after it, so the retry starts afresh.
--
-- KEYS[1] c:<slot>        KEYS[2] p:<phone>      KEYS[3] pl (the platform's send list)
-- KEYS[4] i:<client>
-- Reply: {"ok"|"replay", challenge id, expires_at, resend_not_before} or a refusal.
--
-- KEYS[1] is named by the new id's record name (P.head, records.py challenge_record; the rest
-- of the id is P.tail): with an idempotency key, the key's slot, so it holds the key's earlier
-- challenge, if any, which the new one replaces.

local ch_key, ph_key, sends_platform, ip_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local L = P.limits

local function refuse(reason, retry_after, extra)
  audit({
    account = P.account_j, event = q("verification_started"), outcome = q("refused"),
    reason = q(reason), phone = P.phone_j, client = P.client_j, method = q("phone_otp"),
  })
  return refusal(reason, retry_after, extra)
end

if P.keyed == "1" then
  local e = challenge_of(ch_key)
  if e then
    local existing = id_of(P.head, e.tail)
    if e.expires_at > NOW then
      -- The same request repeats the account and the number.
      if not for_account(e) or e.phone ~= P.phone then
        return refuse("IDEMPOTENCY_KEY_REUSED")
      end
      if e.state ~= "sending" then -- only a code that was sent is replayed
        return { "replay", existing, fmt(e.expires_at), fmt(e.resend_not_before) }
      end
      if NOW < e.created + L.send_lease_seconds then
        return refuse("START_IN_PROGRESS", "1")
      end
      -- Its start died before confirming the send: forget it, start afresh.
      unsend(ch_key, q(existing), e, P.account_j, "code_send_abandoned")
    end
  end
end

if P.facts.linked == "1" then -- R1: a linked child verifies through the guardian
  return refuse("GUARDIAN_REQUIRED")
end
local phone = phone_of(ph_key)
if phone.locked_until > NOW then
  return refuse("PHONE_LOCKED", fmt(phone.locked_until - NOW))
end
if P.facts.full == "1" then
  return refuse("PHONE_ACCOUNT_LIMIT")
end
if phone.last_send + L.resend_cooldown_seconds > NOW then
  return refuse("RESEND_TOO_SOON", fmt(phone.last_send + L.resend_cooldown_seconds - NOW))
end

local ip_sends = times_of(redis.call("GET", ip_key) or "")
-- Small logs (a number's day, an address's hour): counted here; the platform's list is
-- sorted, so its sends in the window are its tail.
local budgets = {
  { "phone_15m", phone.sends, 900, L.sends_per_phone_15m },
  { "phone_day", phone.sends, DAY, L.sends_per_phone_day },
  { "platform_hour", nil, 3600, L.sends_per_platform_hour },
  { "client_ip_hour", ip_sends, 3600, L.sends_per_client_ip_hour },
}
for _, b in ipairs(budgets) do
  local scope, sends, window, limit = b[1], b[2], b[3], b[4]
  local since = NOW - window -- sends strictly after now - window count
  local oldest
  if sends then
    local r = recent(sends, since)
    if #r >= limit then
      table.sort(r)
      oldest = r[#r - limit + 1]
    end
  elseif list_count_after(sends_platform, since) >= limit then
    oldest = struct.unpack(">d", redis.call("LINDEX", sends_platform, -limit))
  end
  if oldest then
    -- The budget frees up when the limit-th most recent send leaves the window.
    return refuse("SEND_LIMIT_EXCEEDED", fmt(oldest + window - NOW), scope)
  end
end

local expires_at = tonumber(P.expires_at)
local resend_not_before = NOW + L.resend_cooldown_seconds
local keep = ms_until(expires_at + L.challenge_retention_seconds)
redis.call("SET", ch_key, challenge_bytes("s", NOW, expires_at, resend_not_before, P.tail,
  P.account_digest, P.phone, P.phone_j, P.client, P.code_mac), "PX", keep)
phone.last_send = NOW
phone.sends = recent(phone.sends, NOW - DAY)
phone.sends[#phone.sends + 1] = NOW
put_phone(ph_key, phone)
ip_sends = recent(ip_sends, NOW - 3600)
ip_sends[#ip_sends + 1] = NOW
redis.call("SET", ip_key, times_bytes(ip_sends), "PX", 3600 * 1000)
list_trim(sends_platform, NOW - 3600)
list_insert(sends_platform, NOW)
redis.call("PEXPIRE", sends_platform, 3600 * 1000)
audit({
  account = P.account_j, event = q("verification_started"), outcome = q("ok"),
  challenge = P.challenge_j, phone = P.phone_j, client = P.client_j, method = q("phone_otp"),
})
return { "ok", P.challenge_id, P.expires_at, fmt(resend_not_before) }
