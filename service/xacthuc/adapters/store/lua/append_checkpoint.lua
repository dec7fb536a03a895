-- append_checkpoint: publish a signed checkpoint only on top of the one it was built on.
--
-- KEYS[1] <ns>:{<platform>}:checkpoints (list, oldest first, one JSON entry per checkpoint)
-- ARGV[1] the tree size of the latest stored checkpoint the caller built on ("0": none)
-- ARGV[2] the new checkpoint's tree size
-- ARGV[3] the new entry (JSON text with at least `size`)
-- A compare-and-set: if another replica stored a checkpoint since the caller read the latest
-- one, nothing is written, so two replicas never publish diverging checkpoints one after the
-- other. Reply: {1, ""} when stored, {0, latest entry or ""} when refused.
-- (Self-contained: it does not use the store prelude, common.lua.)

local last = redis.call("LINDEX", KEYS[1], -1)
local size = 0
if last then
  size = tonumber(cjson.decode(last).size)
end
if size ~= tonumber(ARGV[1]) or tonumber(ARGV[2]) <= size then
  return { 0, last or "" }
end
redis.call("RPUSH", KEYS[1], ARGV[3])
return { 1, "" }
