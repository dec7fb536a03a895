-- list_aging_out: children with an active link whose 16th birthday is in [P.from, P.to),
-- after (P.after_score, P.after_member) when P.after is "1", at most P.limit (P6).
--
-- KEYS[1] agingout
-- Reply: {"ok", member, score, member, score, ...} ordered by score, then member bytes.
-- Children born on the same day share a score, so the page boundary is a (score, member)
-- pair; member order is compared byte by byte here (Lua's `<` follows the server locale).

local CHUNK = 256
local after = P.after == "1"
local after_score = tonumber(P.after_score)

local function bytes_greater(x, y)
  local n = math.min(#x, #y)
  for i = 1, n do
    local bx, by = string.byte(x, i), string.byte(y, i)
    if bx ~= by then
      return bx > by
    end
  end
  return #x > #y
end

local out = { "ok" }
local offset = 0
while true do
  local batch = redis.call("ZRANGEBYSCORE", KEYS[1], P.min, "(" .. P.to, "WITHSCORES",
    "LIMIT", offset, CHUNK)
  if #batch == 0 then
    break
  end
  for i = 1, #batch, 2 do
    local member, score = batch[i], tonumber(batch[i + 1])
    if not after or score > after_score
        or (score == after_score and bytes_greater(member, P.after_member)) then
      out[#out + 1] = member
      out[#out + 1] = batch[i + 1]
      if (#out - 1) / 2 >= P.limit then
        return out
      end
    end
  end
  offset = offset + CHUNK
end
return out
