-- end_guardian_link: end an active link and revoke the child's attestation at once (P6).
--
-- KEYS[1] link:<id>  KEYS[2] audit
-- Reply: {"ok"} or {"ok", the revoked attestation hash...}, or a refusal. The child's keys are
-- named by the stored link, so they are built from PREFIX (same {platform} slot).

local link_key, audit_key = KEYS[1], KEYS[2]
local l = hash_of(link_key)

local function refuse(reason, account_j)
  audit(audit_key, {
    account = account_j, event = q("guardian_link_ended"), outcome = q("refused"),
    reason = q(reason), link = P.link_j,
  })
  return refusal(reason)
end

if not l.link_id then
  return refuse("LINK_NOT_FOUND", '""')
end
if l.ended ~= "" then
  return refuse("LINK_ALREADY_ENDED", l.child_j)
end
end_link(l, P.reason, P.reason_j, audit_key)
local c_key = PREFIX .. "acct:" .. l.child
local c = attestation_of(c_key)
if c.link_id ~= l.link_id or c.status ~= "active" then
  return { "ok" }
end
revoke(c_key, audit_key, l.child_j, c, P.revoke_reason_j)
local reply = { "ok" }
for _, v in ipairs(redis.call("HGETALL", c_key)) do
  reply[#reply + 1] = v
end
return reply
