-- abort_challenge on one server: the gateway refused the SMS; undo the start as if it never
-- happened (steps.lua: abort_number, then the platform's and the address's entries and the
-- idempotency key's claim released; on a cluster redis.py runs them as scripts of their own).
--
-- KEYS[1] the challenge's record (P.tail: the rest of its id)   KEYS[2] the platform's sends
-- KEYS[3] the claim the id's slot would name ("" for an id not of the service's form)
-- Reply: {"ok"} (also when there is nothing to abort: no such challenge, one no longer
-- "sending", or one of another account).

local r = abort_number(KEYS[1])
if r[2] then
  P.release, P.release_client = r[2], r[3]
  release_platform(KEYS[2])
  release_ip(ip_key(r[3]))
  if KEYS[3] ~= "" then
    P.release_id = P.challenge_id
    claim_release(KEYS[3])
  end
end
return { "ok" }
