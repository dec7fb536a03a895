-- confirm_sent: the gateway accepted the SMS; a "sending" challenge becomes "pending".
--
-- KEYS[1] c:<record name> (records.py challenge_record; P.tail: the rest of the id)
-- Reply: {"ok"} (also when there is nothing to confirm: no such challenge, one no longer
-- "sending", or one of another account).

local ch_key = KEYS[1]
local c = challenge_of(ch_key, P.tail)
if not c or c.state ~= "sending" or not for_account(c) then
  return { "ok" }
end
set_challenge_state(ch_key, "pending")
audit({
  account = P.account_j, event = q("code_sent"), outcome = q("ok"), challenge = P.challenge_j,
  phone = c.phone_j,
})
return { "ok" }
