-- The steps of the operations, each over the keys of one subject, so one cluster slot
-- (docs/design/redis-cluster.md). On one Redis server an operation is one script, its
-- driver (start_challenge.lua, ...), calling its steps in turn: one EVALSHA, atomic as a
-- whole. On a Redis Cluster redis.py sends each step as a script of its own to its slot's
-- primary and runs the driver's sequence itself (`_ClusterFlows`); the steps are the same
-- code either way. A step reads its parameters from P (the driver sets the fields a step
-- takes from an earlier one, as redis.py sends them).

local L = P.limits

-- The refusal of a start, audited as the start's one record.
local function start_refused(reason, retry_after, extra)
  audit({
    account = P.account_j, event = q("verification_started"), outcome = q("refused"),
    reason = q(reason), phone = P.phone_j, client = P.client_j, method = q("phone_otp"),
  })
  return refusal(reason, retry_after, extra)
end

-- ---- the idempotency key's claim: which challenge the key started -----------------------
-- Claims are fields of 256 buckets ({k:<b>}:k, hashes named by the slot's first 8 bits,
-- redis.py _claim_key), not keys: a key costs Redis ~200 bytes, a field of a small hash ~40
-- (issue 11's bound per pending challenge). Field: the key's slot (P.slot). Value: when the
-- claim was made and the challenge's expires_at (doubles), then its id's characters after
-- "ch_" and the slot's (its number's tag, then the random ones). While the challenge has not
-- expired, the key answers for it. A bucket lives as long as its latest claim; an expired claim is dropped
-- when its key claims again, or when its bucket is swept (every 16th new field).

local function claim_id(raw)
  local rest = string.sub(raw, 17)
  return "ch_" .. string.sub(rest, 1, 2) .. P.slot .. string.sub(rest, 3)
end

local function put_claim(k_key)
  local expires_at = tonumber(P.expires_at)
  local id = P.challenge_id
  local value = struct.pack(">dd", NOW, expires_at) .. string.sub(id, 4, 5)
    .. string.sub(id, 6 + #P.slot)
  local added = redis.call("HSET", k_key, P.slot, value)
  local keep = ms_until(expires_at + L.challenge_retention_seconds)
  if redis.call("PTTL", k_key) < keep then
    redis.call("PEXPIRE", k_key, keep)
  end
  if added == 1 and redis.call("HLEN", k_key) % 16 == 0 then
    local all = redis.call("HGETALL", k_key)
    for i = 1, #all, 2 do
      if select(2, struct.unpack(">dd", all[i + 1])) + L.challenge_retention_seconds <= NOW then
        redis.call("HDEL", k_key, all[i])
      end
    end
  end
end

-- The key's claim, for P.challenge_id unless the key already names an unexpired challenge:
-- {"free", the earlier (expired) challenge's id or ""}, {"claimed", its id, when it was
-- claimed} when that challenge is of the same number's tag (the number's step decides:
-- replay, in progress, abandoned, or another account), or IDEMPOTENCY_KEY_REUSED when it is
-- of another number.
local function claim_start(k_key)
  local raw = redis.call("HGET", k_key, P.slot)
  local earlier = ""
  if raw then
    earlier = claim_id(raw)
    local claimed_at, expires_at = struct.unpack(">dd", raw)
    if expires_at > NOW then
      if string.sub(earlier, 4, 5) ~= P.tag then
        return start_refused("IDEMPOTENCY_KEY_REUSED")
      end
      return { "claimed", earlier, fmt(claimed_at) }
    end
  end
  put_claim(k_key)
  return { "free", earlier }
end

-- The claim names P.challenge_id (after the number's step replaced the claimed challenge).
local function claim_set(k_key)
  put_claim(k_key)
  return { "ok" }
end

-- The claim goes if it names P.release_id (its challenge undone or refused).
local function claim_release(k_key)
  local raw = redis.call("HGET", k_key, P.slot)
  if raw and claim_id(raw) == P.release_id then
    redis.call("HDEL", k_key, P.slot)
  end
  return { "ok" }
end

-- ---- the number's slot ({n:<tag>}): its challenges and its P2/P3 state --------------------

-- A start's step on its number (KEYS: the challenge's record, the number's state). With a key
-- (P.keyed), the record holds the key's earlier challenge if any: a sent one is replayed, one
-- still "sending" is START_IN_PROGRESS within the send lease, and abandoned after it (undone,
-- audited); none while the key's claim is younger than the send lease (P.claimed_at: a
-- concurrent start with the key claimed it and is on its way) is START_IN_PROGRESS too. Then R1, P2 lock, P8 room (PostgreSQL's facts), P3 cooldown and the number's
-- budgets; the challenge is created ("sending") and the send counted. Reply: {"replay", id,
-- expires_at, resend_not_before}, {"ok", id, expires_at, resend_not_before, abandoned} or a
-- refusal followed by abandoned; abandoned is {created, client, id} of a challenge undone
-- here, whose platform and address entries and claim the caller releases, or {"", "", ""}.
local function start_number(ch_key, ph_key)
  local gone = { "", "", "" }
  local function refuse(reason, retry_after, extra)
    local r = start_refused(reason, retry_after, extra)
    r[5], r[6], r[7] = gone[1], gone[2], gone[3]
    return r
  end
  if P.keyed == "1" then
    local e = challenge_of(ch_key)
    if e and e.expires_at > NOW then
      local existing = id_of(P.head, e.tail)
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
      gone = { fmt(e.created), e.client, existing }
    elseif P.claimed_at ~= "" and NOW < tonumber(P.claimed_at) + L.send_lease_seconds then
      -- Claimed by a start whose step on the number has not run yet (a cluster runs the two
      -- apart): it is in progress.
      return refuse("START_IN_PROGRESS", "1")
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
  for _, b in ipairs({ { "phone_15m", 900, L.sends_per_phone_15m },
    { "phone_day", DAY, L.sends_per_phone_day } }) do
    local r = recent(phone.sends, NOW - b[2]) -- sends strictly after now - window count
    if #r >= b[3] then
      table.sort(r)
      -- The budget frees up when the limit-th most recent send leaves the window.
      return refuse("SEND_LIMIT_EXCEEDED", fmt(r[#r - b[3] + 1] + b[2] - NOW), b[1])
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
  audit({
    account = P.account_j, event = q("verification_started"), outcome = q("ok"),
    challenge = P.challenge_j, phone = P.phone_j, client = P.client_j, method = q("phone_otp"),
  })
  return { "ok", P.challenge_id, P.expires_at, fmt(resend_not_before), gone[1], gone[2], gone[3] }
end

-- Undo start_number's new challenge (P.tail names it), silently: a later budget refused
-- the start, whose refusal is its record.
local function unstart_number(ch_key)
  local c = challenge_of(ch_key, P.tail)
  if c and c.state == "sending" and c.created == NOW then
    unsend(ch_key, "", c, "")
  end
  return { "ok" }
end

-- The record of a key's earlier, expired challenge of another number: replaced by the new one.
local function drop_record(ch_key)
  redis.call("DEL", ch_key)
  return { "ok" }
end

-- abort_challenge's step: the gateway refused the SMS; the challenge undone on its number
-- (audited). Reply {"ok"} when there is nothing to abort (no such challenge, one no longer
-- "sending", or one of another account), else {"ok", created, client}: the caller releases
-- the platform's and the address's entries of that time, and the key's claim.
local function abort_number(ch_key)
  local c = challenge_of(ch_key, P.tail)
  if not c or c.state ~= "sending" or not for_account(c) then
    return { "ok" }
  end
  unsend(ch_key, P.challenge_j, c, P.account_j, "code_send_failed")
  return { "ok", fmt(c.created), c.client }
end

-- ---- send budgets: the platform's ({pl:<platform>}:pl), an address's ({i:<bucket>}:i) -----
-- A reservation checks the window and appends the send (NOW) in one step; releasing removes
-- one entry of the time P.release (the lists keep times, not ids: the counts are the same).

local function release_platform(key)
  redis.call("LREM", key, -1, struct.pack(">d", tonumber(P.release)))
  return { "ok" }
end

local function reserve_platform(key)
  local limit = L.sends_per_platform_hour
  if list_count_after(key, NOW - 3600) >= limit then
    local oldest = struct.unpack(">d", redis.call("LINDEX", key, -limit))
    return refusal("SEND_LIMIT_EXCEEDED", fmt(oldest + 3600 - NOW), "platform_hour")
  end
  list_trim(key, NOW - 3600)
  list_insert(key, NOW)
  redis.call("PEXPIRE", key, 3600 * 1000)
  return { "ok" }
end

-- An address's sends are a field of one of 256 buckets ({i:<b>}:i, hashes named by 8 bits of
-- SHA-1 of the address's pseudonym: common.lua ip_key, redis.py _ip_key), not a key of their
-- own: a key costs Redis ~200 bytes, a field of a small hash ~40 (issue 11's bound per
-- pending challenge, worst case: a new address per start). Field: the pseudonym, packed.
-- Value: its send times of the hour. A bucket lives an hour after its latest send; an
-- address whose sends all left the hour is dropped when its bucket is swept (every 16th new
-- field) or when it sends again.

local function put_ip(key, field, sends)
  if #sends > 0 then
    redis.call("HSET", key, field, times_bytes(sends))
  else
    redis.call("HDEL", key, field)
  end
end

-- P.release_client's entry of the time P.release goes.
local function release_ip(key)
  local field = pack_text(P.release_client)
  local raw = redis.call("HGET", key, field)
  if raw then
    put_ip(key, field, without(times_of(raw), tonumber(P.release)))
  end
  return { "ok" }
end

local function reserve_ip(key)
  local limit = L.sends_per_client_ip_hour
  local field = pack_text(P.client)
  local r = recent(times_of(redis.call("HGET", key, field) or ""), NOW - 3600)
  if #r >= limit then
    table.sort(r)
    return refusal("SEND_LIMIT_EXCEEDED", fmt(r[#r - limit + 1] + 3600 - NOW), "client_ip_hour")
  end
  r[#r + 1] = NOW
  local added = redis.call("HSET", key, field, times_bytes(r))
  redis.call("PEXPIRE", key, 3600 * 1000)
  if added == 1 and redis.call("HLEN", key) % 16 == 0 then
    local all = redis.call("HGETALL", key)
    for i = 1, #all, 2 do
      if #recent(times_of(all[i + 1]), NOW - 3600) == 0 then
        redis.call("HDEL", key, all[i])
      end
    end
  end
  return { "ok" }
end

-- ---- personal-ID attempts: the account's ({a:<account>}) and the number's ({id:<number>}) --
-- Each scope: idg (failures, lock-out: a hash), idatt (the hour's attempts: a zset).

local HOUR = 3600

local function id_started(outcome, reason)
  audit({
    account = P.account_j, event = q("id_check_started"), outcome = q(outcome),
    reason = q(reason), attempt = P.attempt_j, personal_id = P.subject_j, client = P.client_j,
    purpose = P.purpose_j, id_type = P.id_type_j,
  })
end

local function id_refused(reason, retry_after, extra)
  id_started("refused", reason)
  return refusal(reason, retry_after, extra)
end

-- A scope's lock-out (its retry_after) or nil.
local function id_locked(guard)
  local locked_until = tonumber(redis.call("HGET", guard, "locked_until")) or 0
  if locked_until > NOW then
    return fmt(locked_until - NOW)
  end
end

-- A scope's full window (its retry_after) or nil; the window trimmed to the hour.
local function id_window_full(window, limit)
  redis.call("ZREMRANGEBYSCORE", window, "-inf", fmt(NOW - HOUR))
  local n = redis.call("ZCARD", window)
  if n >= limit then
    local oldest = redis.call("ZRANGE", window, n - limit, n - limit, "WITHSCORES")
    return fmt(tonumber(oldest[2]) + HOUR - NOW)
  end
end

local function id_count(window)
  redis.call("ZADD", window, fmt(NOW), P.attempt_id)
  redis.call("PEXPIRE", window, ms_until(NOW + HOUR))
end

-- begin_id_check's first step, the account's: its lock-out refuses; otherwise the attempt is
-- counted in its window when there is room. Reply {"ok", "1" counted | "", retry_after of a
-- full window | ""}: a full window refuses after the number's lock-out (the order of the
-- checks: both lock-outs, then both windows, then the facts).
local function id_begin_account(guard, window)
  local locked = id_locked(guard)
  if locked then
    return id_refused("ID_ATTEMPTS_EXCEEDED", locked, "account")
  end
  local full = id_window_full(window, L.id_attempts_per_account_hour)
  if full then
    return { "ok", "", full }
  end
  id_count(window)
  return { "ok", "1", "" }
end

-- begin_id_check's second step, the number's: its lock-out, the account's full window
-- (P.account_full), its own window, then R1/R3/R4 from PostgreSQL's facts; the attempt
-- counted and audited. On a refusal the caller takes the account's count back (id_release).
local function id_begin_number(guard, window)
  local locked = id_locked(guard)
  if locked then
    return id_refused("ID_ATTEMPTS_EXCEEDED", locked, "personal_id")
  end
  if P.account_full ~= "" then
    return id_refused("ID_ATTEMPTS_EXCEEDED", P.account_full, "account")
  end
  local full = id_window_full(window, L.id_attempts_per_number_hour)
  if full then
    return id_refused("ID_ATTEMPTS_EXCEEDED", full, "personal_id")
  end
  local F = P.facts
  if P.purpose == "commercial_livestream" then
    if F.active ~= "1" then
      return id_refused("ACCOUNT_NOT_AUTHENTICATED")
    end
    if F.managed == "1" then
      return id_refused("GUARDIAN_MANAGED_NO_COMMERCIAL_LIVESTREAM")
    end
  elseif F.linked == "1" then
    return id_refused("GUARDIAN_REQUIRED") -- R1: a linked child verifies through the guardian
  end
  id_count(window)
  id_started("ok", "")
  return { "ok" }
end

local function id_release(window)
  redis.call("ZREM", window, P.attempt_id)
  return { "ok" }
end

local function id_record(event, outcome, reason, extra)
  local f = {
    account = P.account_j, event = q(event), outcome = q(outcome), reason = q(reason),
    attempt = P.attempt_j, personal_id = P.subject_j, client = P.client_j, purpose = P.purpose_j,
    id_type = P.id_type_j,
  }
  for k, v in pairs(extra or {}) do
    f[k] = v
  end
  audit(f)
end

-- finish_id_check's step on one scope (P.scope: "account" first, then "personal_id"): the
-- registry's answer (P.answer). What an attempt costs (audit field `refunded`): no answer
-- costs nothing (both windows give the place back); a match costs the account, not the
-- number, so the number's window holds only attempts that did not match or still wait, alike
-- for a real number and an unknown one (no oracle); a non-match costs both, and counts a
-- failure in both (lock-outs). The account's step writes the answer's record. Reply {"ok"} or
-- {"locked", seconds}.
local function id_finish(guard, window)
  local first = P.scope == "account"
  if P.answer == "unavailable" then
    redis.call("ZREM", window, P.attempt_id)
    if first then
      id_record("id_check", "failed", "REGISTRY_UNAVAILABLE", { refunded = q("account,personal_id") })
    end
    return { "ok" }
  end
  if P.answer == "match" then
    if not first then
      redis.call("ZREM", window, P.attempt_id)
    end
    -- A match: the failure counters start afresh.
    redis.call("HSET", guard, "fails", "0", "lock_level", "0")
    return { "ok" }
  end
  local h = redis.call("HMGET", guard, "fails", "lock_level", "locked_until")
  local fails, level = (tonumber(h[1]) or 0) + 1, tonumber(h[2]) or 0
  local locked_until = tonumber(h[3]) or 0
  local seconds
  if fails >= L.id_max_failures then
    level = level + 1
    seconds = math.floor(math.min(
      L.id_lock_base_seconds * 2 ^ math.max(0, level - 1), L.id_lock_max_seconds))
    locked_until = NOW + seconds
    fails = 0
  end
  redis.call("HSET", guard, "fails", int(fails), "lock_level", int(level),
    "locked_until", fmt(locked_until))
  redis.call("PEXPIRE", guard, ms_until(math.max(locked_until, NOW) + DAY))
  if first then
    id_record("id_check", "failed", "PERSONAL_ID_NOT_MATCHED")
  end
  if seconds then
    id_record("id_locked", "locked", "ID_ATTEMPTS_EXCEEDED",
      { scope = q(P.scope), lock_seconds = int(seconds) })
    return { "locked", fmt(seconds) }
  end
  return { "ok" }
end
