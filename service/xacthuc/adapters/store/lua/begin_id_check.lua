-- begin_id_check on one server (steps.lua; on a cluster redis.py runs the two steps as
-- scripts of their own): refuse a locked or over-budget account or number, or a livestream
-- upgrade of an account that cannot have it; otherwise count the attempt in both windows.
-- Issue 3 "no oracle", R3, R4. The checks in order: both lock-outs, both windows, the facts
-- (PostgreSQL's, read before this step, pair.py: P.facts active, managed, linked).
--
-- KEYS[1] the account's failures  KEYS[2] the account's attempts of the hour
-- KEYS[3] the number's failures   KEYS[4] the number's attempts of the hour
-- Reply: {"ok"} or a refusal.

local a = id_begin_account(KEYS[1], KEYS[2])
if a[1] == "err" then
  return a
end
P.account_full = a[3]
local b = id_begin_number(KEYS[3], KEYS[4])
if b[1] == "err" and a[2] == "1" then
  id_release(KEYS[2])
end
return b
