-- start_challenge on one server: the steps of steps.lua in turn, one atomic script (on a
-- cluster redis.py runs the same sequence, a script per step). Idempotency (the key's claim,
-- then its record on the number), R1, P2 lock, P8 room, P3 cooldown and the number's budgets,
-- the challenge created; then the platform's and the address's budgets, which undo the start
-- when they refuse (silently: the refusal is the start's record). R1 and P8 are PostgreSQL's
-- facts, read before this step (pair.py): P.facts.linked, P.facts.full.
--
-- KEYS[1] the challenge's record  KEYS[2] the number's state  KEYS[3] the platform's sends
-- KEYS[4] the address's sends     KEYS[5] the idempotency key's claim (with a key only)
-- Reply: {"ok"|"replay", challenge id, expires_at, resend_not_before} or a refusal.

local ch_key, ph_key, pl_key, ip = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local own_claim, earlier = false, ""
if P.keyed == "1" then
  local c = claim_start(KEYS[5])
  if c[1] == "err" then
    return c
  end
  own_claim, earlier = c[1] == "free", (c[1] == "free") and c[2] or ""
  P.claimed_at = (c[1] == "claimed") and c[3] or ""
end

local n = start_number(ch_key, ph_key)
if n[1] == "replay" then
  return n
end
if n[5] ~= "" then -- a challenge abandoned by its start, undone: its entries go
  P.release, P.release_client = n[5], n[6]
  release_platform(pl_key)
  release_ip(ip_key(n[6]))
end
-- Whichever challenge the claim names, if the start is refused, goes with it.
P.release_id = own_claim and P.challenge_id or n[7]

local refused
if n[1] == "err" then
  refused = n
else
  local r = reserve_platform(pl_key)
  if r[1] == "ok" then
    r = reserve_ip(ip)
    if r[1] ~= "ok" then
      P.release, P.release_client = P.now, P.client
      release_platform(pl_key)
    end
  end
  if r[1] ~= "ok" then
    OUTBOX[#OUTBOX] = nil -- the start's record: it is refused after all
    unstart_number(ch_key)
    refused = start_refused(r[2], r[3], r[4])
  end
end
if refused then
  if P.keyed == "1" and P.release_id ~= "" then
    claim_release(KEYS[5])
  end
  return { refused[1], refused[2], refused[3], refused[4] }
end
if P.keyed == "1" and not own_claim then
  claim_set(KEYS[5]) -- the claimed challenge was replaced
end
if earlier ~= "" then -- the key's expired challenge, of another number: replaced
  local earlier_key = challenge_key(earlier)
  if earlier_key ~= ch_key then
    drop_record(earlier_key)
  end
end
return { "ok", n[2], n[3], n[4] }
