-- account_state: the account's attestation and its latest lock, in one round trip (reads only;
-- what Authorize decides from).
--
-- KEYS[1] acct:<account>  KEYS[2] lock:<account>
-- Runs without the prelude (no parameters, no audit): redis.py lists it in _BARE_SCRIPTS.
-- Reply: {"ok", n, the attestation hash (n items)..., the lock hash...}; n is 0 without one.

local a = redis.call("HGETALL", KEYS[1])
local r = { "ok", #a }
for _, v in ipairs(a) do
  r[#r + 1] = v
end
for _, v in ipairs(redis.call("HGETALL", KEYS[2])) do
  r[#r + 1] = v
end
return r
