-- abort_challenge: the gateway refused the SMS; undo the start as if it never happened.
--
-- KEYS[1] c:<record name> (records.py challenge_record; P.tail: the rest of the id)   KEYS[2] pl (the platform's send list)
-- Reply: {"ok"} (also when there is nothing to abort: no such challenge, one no longer
-- "sending", or one of another account).
--
-- The caller knows only the challenge id and its account, so the keys named by the challenge
-- (its phone, its client bucket) are built by unsend() from PREFIX and the stored pseudonyms.
-- They carry the same {platform} hash tag as KEYS, so they live in the same slot.

local ch_key = KEYS[1]
local c = challenge_of(ch_key, P.tail)
if not c or c.state ~= "sending" or not for_account(c) then
  return { "ok" }
end
unsend(ch_key, P.challenge_j, c, P.account_j, "code_send_failed")
return { "ok" }
