-- append_audit: one audit record with no state change (an auditor's call, for example).
--
-- KEYS[1] audit
-- Python rendered the record around its sequence number (P.head .. seq .. P.tail), so it is
-- byte for byte what the in-memory store writes; only the number is assigned here, atomically,
-- and the time moved up to the last record's when it is earlier (see audit_time).
-- Reply: {"ok", index}.

local n = redis.call("LLEN", KEYS[1])
local tail = P.tail
local time = audit_time(KEYS[1])
if time ~= P.time_j then -- the record's time, in the tail after seq, moves up to the last one's
  local needle = '"time":' .. P.time_j
  local i, j = string.find(tail, needle, 1, true)
  tail = string.sub(tail, 1, i - 1) .. '"time":' .. time .. string.sub(tail, j + 1)
end
redis.call("RPUSH", KEYS[1], P.head .. int(n) .. tail)
return { "ok", int(n) }
