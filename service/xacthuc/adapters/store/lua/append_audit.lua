-- append_audit: one audit record with no state change (an auditor's call, for example).
--
-- KEYS[1] audit
-- Python rendered the record around its sequence number (P.head .. seq .. P.tail), so it is
-- byte for byte what the in-memory store writes; only the number is assigned here, atomically.
-- Reply: {"ok", index}.

local n = redis.call("LLEN", KEYS[1])
redis.call("RPUSH", KEYS[1], P.head .. int(n) .. P.tail)
return { "ok", int(n) }
