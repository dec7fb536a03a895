-- append_audit: one audit record with no state change (an auditor's call, for example).
--
-- KEYS[1] audit
-- Python rendered the record around its sequence number (P.head .. seq .. P.tail), so it is
-- byte for byte what the in-memory store writes; only the number is assigned here, atomically,
-- and the time moved up to the last record's when it is earlier (see audit_time).
-- Reply: {"ok", index}.

return { "ok", int(audit_rendered(KEYS[1])) }
