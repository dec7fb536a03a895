-- finish_id_check: record the registry's answer for an attempt begun by begin_id_check.
--
-- KEYS[1] idg:acct:<account>   KEYS[2] idatt:acct:<account>
-- KEYS[3] idg:id:<number>      KEYS[4] idatt:id:<number>   (as begin_id_check's)
-- Reply: {"match"} or a refusal. On a match, P8, the attestation and their records are
-- PostgreSQL's step (pair.py, xacthuc_issue_id), idempotent on the attempt id.
--
-- What an attempt costs (audit field `refunded`): no registry answer costs nothing (both
-- windows give the place begin_id_check reserved back); a match costs the account, not the
-- number, so the number's window holds only attempts that did not match or still wait, alike
-- for a real number and an unknown one (no oracle); a non-match costs both.

local L = P.limits

local function record(event, outcome, reason, extra)
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

local acct_window, id_window = KEYS[2], KEYS[4]

if P.answer == "unavailable" then
  redis.call("ZREM", acct_window, P.attempt_id)
  redis.call("ZREM", id_window, P.attempt_id)
  record("id_check", "failed", "REGISTRY_UNAVAILABLE", { refunded = q("account,personal_id") })
  return refusal("REGISTRY_UNAVAILABLE")
end

local guards = { { "account", KEYS[1] }, { "personal_id", KEYS[3] } }

if P.answer ~= "match" then
  local locked = {}
  for _, g in ipairs(guards) do
    local h = redis.call("HMGET", g[2], "fails", "lock_level", "locked_until")
    local fails, level = (tonumber(h[1]) or 0) + 1, tonumber(h[2]) or 0
    local locked_until = tonumber(h[3]) or 0
    if fails >= L.id_max_failures then
      level = level + 1
      local seconds = math.floor(math.min(
        L.id_lock_base_seconds * 2 ^ math.max(0, level - 1), L.id_lock_max_seconds))
      locked_until = NOW + seconds
      fails = 0
      locked[#locked + 1] = { g[1], seconds }
    end
    redis.call("HSET", g[2], "fails", int(fails), "lock_level", int(level),
      "locked_until", fmt(locked_until))
    redis.call("PEXPIRE", g[2], ms_until(math.max(locked_until, NOW) + DAY))
  end
  record("id_check", "failed", "PERSONAL_ID_NOT_MATCHED")
  for _, l in ipairs(locked) do
    record("id_locked", "locked", "ID_ATTEMPTS_EXCEEDED",
      { scope = q(l[1]), lock_seconds = int(l[2]) })
  end
  if #locked > 0 then
    return refusal("ID_ATTEMPTS_EXCEEDED", fmt(locked[1][2]), locked[1][1])
  end
  return refusal("PERSONAL_ID_NOT_MATCHED")
end

redis.call("ZREM", id_window, P.attempt_id)
-- A match: the failure counters start afresh.
for _, g in ipairs(guards) do
  redis.call("HSET", g[2], "fails", "0", "lock_level", "0")
end
return { "match" }
