-- revoke_attestation: revoke an account's attestation (issue 5): status "revoked", its bit
-- in the platform's status bitmap, audited. Idempotent: a revoked one is returned as is.
--
-- KEYS[1] acct:<account>  KEYS[2] audit
-- Reply: {"ok", the attestation hash...} or a refusal (ATTESTATION_NOT_FOUND).

local a = attestation_of(KEYS[1])
if not a.account_id then
  return refusal("ATTESTATION_NOT_FOUND")
end
if a.status ~= "revoked" then
  revoke(KEYS[1], KEYS[2], P.account_j, a, P.reason_j)
end
local reply = { "ok" }
for _, v in ipairs(redis.call("HGETALL", KEYS[1])) do
  reply[#reply + 1] = v
end
return reply
