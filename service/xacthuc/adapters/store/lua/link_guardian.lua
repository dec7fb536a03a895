-- link_guardian: register a child under 16 through a verified guardian (R1, P6).
--
-- KEYS[1] acct:<guardian account>  KEYS[2] acct:<child>      KEYS[3] childlink:<child>
-- KEYS[4] gkids:<guardian pseudonym> KEYS[5] agingout          KEYS[6] audit
-- KEYS[7] link:<new link id>
-- Reply: {"ok", link id, "1" when renewed else "0", the child's attestation hash...} or a
-- refusal. Every check comes before the first write. A renewal's link key (link:<current id>)
-- is named by stored state, so it is built from PREFIX (same {platform} slot).

local g_key, c_key, ptr_key, kids_key, aging_key, audit_key, new_link_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local L = P.limits
local a = P.attestation

local function record(event, outcome, reason, extra)
  local f = {
    account = P.account_j, event = q(event), outcome = q(outcome), reason = q(reason),
    guardian = P.guardian_j, guardian_account = P.guardian_account_j,
    relationship = P.relationship_j,
  }
  for k, v in pairs(extra or {}) do
    f[k] = v
  end
  audit(audit_key, f)
end

local function refuse(reason)
  record("guardian_link_created", "refused", reason)
  return refusal(reason)
end

local g = attestation_of(g_key)
local g_subject = g.phone or g.personal_id or ""
if not active(g) or g.guardian_managed == "1" or g.token_id ~= P.guardian_token_id
    or g_subject ~= P.guardian_subject then
  return refuse("GUARDIAN_NOT_VERIFIED")
end
if g.age_band == "16_17" then
  return refuse("GUARDIAN_UNDER_18")
end
local c = attestation_of(c_key)
if active(c) and (c.age_band == "adult" or c.age_band == "16_17") then
  return refuse("CHILD_NOT_UNDER_16") -- the registry proved the account holder 16 or over
end
local current = redis.call("GET", ptr_key)
local renewing = false
if current then
  renewing = redis.call("HGET", PREFIX .. "link:" .. current, "guardian") == P.guardian_subject
  if not renewing then
    return refuse("CHILD_ALREADY_LINKED")
  end
elseif redis.call("SCARD", kids_key) >= L.max_children_per_guardian then
  return refuse("GUARDIAN_CHILD_LIMIT")
end

local link_id, link_j
if renewing then
  local link_key = PREFIX .. "link:" .. current
  link_id, link_j = current, redis.call("HGET", link_key, "link_j")
  redis.call("HSET", link_key, "relationship", P.relationship, "method", a.method,
    "child_consent", P.child_consent, "renewed", P.now, "aged_out_at", P.aged_out_at)
else
  link_id, link_j = P.link_id, P.link_j
  redis.call("DEL", new_link_key)
  redis.call("HSET", new_link_key,
    "link_id", P.link_id, "link_j", P.link_j, "child", P.account, "child_j", P.account_j,
    "guardian_account", P.guardian_account, "guardian", P.guardian_subject,
    "guardian_j", P.guardian_j, "relationship", P.relationship, "method", a.method,
    "guardian_consent", "1", "child_consent", P.child_consent, "created", P.now,
    "renewed", P.now, "aged_out_at", P.aged_out_at, "ended", "", "end_reason", "")
  redis.call("SET", ptr_key, P.link_id)
  redis.call("SADD", kids_key, P.account)
end
redis.call("ZADD", aging_key, P.aged_out_at, P.account)

record(renewing and "guardian_link_renewed" or "guardian_link_created", "ok", "",
  { link = link_j, method = a.method_j })
audit(audit_key, {
  account = P.account_j, event = q("consent_recorded"), outcome = q("ok"), link = link_j,
  party = q("guardian"),
})
if P.child_consent == "1" then
  audit(audit_key, {
    account = P.account_j, event = q("consent_recorded"), outcome = q("ok"), link = link_j,
    party = q("child"),
  })
end
if active(c) then -- at most one live token per child: the one replaced is revoked
  revoke(c_key, audit_key, P.account_j, c, q("superseded"))
end
local idx = int(next_status_idx())
attest(c_key, P.account, "", {
  "account_id", P.account, "method", a.method, "token_id", a.token_id, "verified_at", P.now,
  "issued_at", a.issued_at, "expires_at", a.expires_at, "status", "active",
  "guardian_managed", "1", "commercial_livestream", "0", "age_band", "under_16",
  "guardian_ref", P.guardian_ref, "aged_out_at", P.aged_out_at, "link_id", link_id,
  "status_idx", idx, "token_id_j", a.token_id_j,
})
audit(audit_key, {
  account = P.account_j, event = q("attestation_issued"), outcome = q("ok"),
  token_id = a.token_id_j, method = a.method_j, expires = a.expires, guardian_managed = "1",
  age_band = q("under_16"),
})
local reply = { "ok", link_id, renewing and "1" or "0" }
for _, v in ipairs(redis.call("HGETALL", c_key)) do
  reply[#reply + 1] = v
end
return reply
