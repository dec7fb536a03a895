-- abort_challenge: the gateway refused the SMS; undo the start as if it never happened.
--
-- KEYS[1] ch:<id>   KEYS[2] sends:platform   KEYS[3] audit
-- Reply: {"ok"} (also when there is nothing to abort).
--
-- The caller knows only the challenge id, so the keys named by the challenge (its phone, its
-- client bucket, its idempotency key) are built by unsend() from PREFIX and the stored
-- pseudonyms. They carry the same {platform} hash tag as KEYS, so they live in the same slot.

local ch_key, audit_key = KEYS[1], KEYS[3]
local c = hash_of(ch_key)
if c.state ~= "sending" then
  return { "ok" }
end
unsend(P.challenge_id, P.challenge_j, c, "code_send_failed", audit_key)
return { "ok" }
