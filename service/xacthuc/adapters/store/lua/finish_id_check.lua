-- finish_id_check on one server (steps.lua id_finish on each scope; on a cluster redis.py
-- runs the two as scripts of their own, concurrently): the registry's answer for an attempt
-- begun by begin_id_check.
--
-- KEYS as begin_id_check's. Reply: {"match"} or a refusal. On a match, P8, the attestation and
-- their records are PostgreSQL's step (pair.py, xacthuc_issue_id), idempotent on the attempt id.

P.scope = "account"
local a = id_finish(KEYS[1], KEYS[2])
P.scope = "personal_id"
local b = id_finish(KEYS[3], KEYS[4])
if P.answer == "unavailable" then
  return refusal("REGISTRY_UNAVAILABLE")
end
if P.answer == "match" then
  return { "match" }
end
if a[1] == "locked" then
  return refusal("ID_ATTEMPTS_EXCEEDED", a[2], "account")
end
if b[1] == "locked" then
  return refusal("ID_ATTEMPTS_EXCEEDED", b[2], "personal_id")
end
return refusal("PERSONAL_ID_NOT_MATCHED")
