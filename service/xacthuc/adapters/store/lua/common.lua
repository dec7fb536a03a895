-- Prelude of every store script (redis.py puts it in front of each operation's body). The
-- scripts keep only ephemeral state (the Redis half of the pair store, pair.py): durable
-- facts come from PostgreSQL as parameters, and records go back to it (OUTBOX).
--
-- ARGV[1] is one JSON object of named parameters. Times travel as decimal strings written by
-- Python's repr() and are read with tonumber(), so Lua computes with the very same doubles as
-- the in-memory store; times written back are formatted with %.17g, which round-trips exactly.
-- `now` always comes from the caller's injected clock, never from the Redis TIME command.
--
-- Strings that end up in audit records arrive already JSON-encoded by Python (fields ending in
-- `_j`), so the records here are byte for byte what `audit_record()` writes in Python:
-- Redis' cjson escapes differently (it writes "\/" and raw UTF-8), so it is not used to encode.

local P = cjson.decode(ARGV[1])
local NOW = tonumber(P.now)
local PREFIX = P.prefix -- "<namespace>:<platform>:"; each key's hash tag follows (redis.py)
local DAY = 86400

local function fmt(x)
  return string.format("%.17g", x)
end

local function int(x)
  return string.format("%d", x)
end

-- A JSON string literal for the fixed ASCII names used below (events, reasons, outcomes).
local function q(s)
  return '"' .. s .. '"'
end

-- Milliseconds from now until `deadline` (seconds), at least 1 so PEXPIRE never deletes.
local function ms_until(deadline)
  local ms = math.ceil((deadline - NOW) * 1000)
  if ms < 1 then
    ms = 1
  end
  return ms
end

-- Every field an audit record may carry, in Python's sorted-key order.
local AUDIT_FIELDS = {
  "account", "age_band", "attempt", "attempts_remaining", "challenge", "client",
  "commercial_livestream", "event", "expires", "guardian", "guardian_account",
  "guardian_managed", "id_type", "kind", "link", "lock_level", "lock_seconds", "lock_until",
  "method", "outcome", "party", "personal_id", "phone", "platform", "purpose", "reason",
  "refunded", "relationship", "request", "scope", "seq", "status_idx", "time", "token_id", "v",
}
-- Fields audit_record() always writes; the others (extras) are left out when they are "".
local AUDIT_BASE = {
  account = true, event = true, outcome = true, platform = true, reason = true, seq = true,
  time = true, v = true,
}
local AUDIT_KNOWN = {}
for _, name in ipairs(AUDIT_FIELDS) do
  AUDIT_KNOWN[name] = true
end

-- The audit log is PostgreSQL's (issue 10): records are not appended here. They collect in
-- OUTBOX, which the script returns with its reply ({OUTBOX, reply}, see redis.py `_lua`), and
-- PostgreSQL numbers them (seq 0 here), keeps their times from going backwards and stores
-- them before the call answers.
local OUTBOX = {}

-- Render one record into OUTBOX; `fields` maps names to JSON texts.
local function audit(fields)
  local f = { v = P.audit_version, platform = P.platform_j, reason = '""', time = P.time_j,
    seq = "0" }
  for name, value in pairs(fields) do
    if not AUDIT_KNOWN[name] then
      error("unknown audit field " .. name)
    end
    f[name] = value
  end
  local parts = {}
  for _, name in ipairs(AUDIT_FIELDS) do
    local value = f[name]
    if value ~= nil and (AUDIT_BASE[name] or value ~= '""') then
      parts[#parts + 1] = '"' .. name .. '":' .. value
    end
  end
  OUTBOX[#OUTBOX + 1] = "{" .. table.concat(parts, ",") .. "}"
end

-- A refusal as Python raises it: {"err", reason, retry_after seconds or "", extra or ""}.
local function refusal(reason, retry_after, extra)
  return { "err", reason, retry_after or "", extra or "" }
end

-- Constant-time MAC comparison: every byte of every candidate is XORed with the stored MAC,
-- with no early exit, so the time depends only on the lengths, never on where bytes differ.
local function mac_matches(stored, candidates)
  local n = #stored
  local found = 0
  for _, candidate in ipairs(candidates) do
    local diff = (#candidate == n) and 0 or 1
    for i = 1, n do
      diff = bit.bor(diff, bit.bxor(string.byte(stored, i), string.byte(candidate, i) or 0))
    end
    found = bit.bor(found, (diff == 0) and 1 or 0)
  end
  return found == 1
end

-- ---- compact challenge state (issue 11: bytes per pending challenge) ------------------
-- A pending challenge costs two small keys (c:, p:), a field of a claim bucket and of an
-- address bucket (steps.lua) and one entry of the platform's send list; each value is
-- packed: times as 8-byte doubles (struct ">d", the caller's exact doubles), hex pseudonyms
-- and MACs as raw bytes. Redis spends ~200 bytes on a key whatever its value, so every field
-- is as short as it can be and nothing is stored twice.

-- Hex text (optionally after "ph_" or "ip_") packs to its bytes behind a tag byte; any other
-- text is kept behind tag 0, so every string round-trips exactly.
local PACK_KINDS = { "ph_", "ip_", "" }
local function pack_text(s)
  for i, kind in ipairs(PACK_KINDS) do
    local rest = string.sub(s, #kind + 1)
    if string.sub(s, 1, #kind) == kind and #rest > 0 and #rest % 2 == 0
        and not string.find(rest, "[^0-9a-f]") then
      return string.char(i) .. string.gsub(rest, "..", function(h)
        return string.char(tonumber(h, 16))
      end)
    end
  end
  return "\0" .. s
end

local function unpack_text(b)
  local tag = string.byte(b, 1)
  if tag == 0 then
    return string.sub(b, 2)
  end
  return PACK_KINDS[tag] .. string.gsub(string.sub(b, 2), ".", function(c)
    return string.format("%02x", string.byte(c))
  end)
end

-- One length byte, then the bytes.
local function field(s)
  if #s > 255 then
    error("challenge field too long")
  end
  return string.char(#s) .. s
end

-- The JSON text of a stored name: kept only when q() would not give it (never, for the ids
-- and pseudonyms the service makes).
local function json_of(s, s_j)
  return (s_j ~= "") and s_j or q(s)
end
local function json_kept(s, s_j)
  return (s_j == q(s)) and "" or s_j
end

local STATES = { s = "sending", p = "pending", c = "consumed" }

-- The account a challenge was started for is kept as its digest (ACCOUNT_DIGEST_BYTES raw
-- bytes: redis.py `_account_digest`, 16 bytes of SHA-256 salted with the record's name),
-- never in full; every caller passes the account id with the challenge id, as P.account_digest
-- (hex) and P.account_j for the audit records.
local ACCOUNT_DIGEST_BYTES = 16
local function unhex(h)
  return (string.gsub(h, "..", function(x)
    return string.char(tonumber(x, 16))
  end))
end

-- The challenge in `key` as a table (nil when there is none, or when `tail` is given and the
-- record holds another challenge of the same slot). A record is named by "ch_" and the id's
-- characters after its number's tag up to a slot's length (records.py challenge_record: the
-- idempotency key's slot), so it keeps the rest, `tail` (the tag, then the last 9). Layout:
-- state (1 byte s/p/c), attempts (1 byte), created, expires_at, resend_not_before (doubles),
-- tail (a length byte first), the account's digest (ACCOUNT_DIGEST_BYTES), then phone,
-- phone_j, client (a length byte each; phone_j empty when q() gives it), and the packed MAC to
-- the end.
local function challenge_of(key, tail)
  local raw = redis.call("GET", key)
  if not raw then
    return nil
  end
  local state, attempts, created, expires_at, resend, pos = struct.unpack(">c1Bddd", raw)
  local n = string.byte(raw, pos)
  local stored_tail = string.sub(raw, pos + 1, pos + n)
  if tail and stored_tail ~= tail then
    return nil
  end
  pos = pos + 1 + n
  local account_digest = string.sub(raw, pos, pos + ACCOUNT_DIGEST_BYTES - 1)
  pos = pos + ACCOUNT_DIGEST_BYTES
  local f = {}
  for i = 1, 3 do
    local n = string.byte(raw, pos)
    f[i] = string.sub(raw, pos + 1, pos + n)
    pos = pos + 1 + n
  end
  local phone = unpack_text(f[1])
  return {
    tail = stored_tail, state = STATES[state], attempts = attempts, created = created,
    expires_at = expires_at, resend_not_before = resend, account_digest = account_digest,
    phone = phone, phone_j = json_of(phone, f[2]), client = unpack_text(f[3]),
    mac = unpack_text(string.sub(raw, pos)),
  }
end

-- The id of the challenge kept under the record name `head` with `tail` (records.py
-- challenge_record, reversed): "ch_", the tag (the tail's first 2), the name's part after
-- "ch_", the tail's rest; a name with no tail is the whole id.
local function id_of(head, tail)
  if tail == "" then
    return head
  end
  return "ch_" .. string.sub(tail, 1, 2) .. string.sub(head, 4) .. string.sub(tail, 3)
end

-- The challenge `c` (from challenge_of) was started for the caller's account (P.account_digest).
local function for_account(c)
  return c.account_digest == unhex(P.account_digest)
end

local function challenge_bytes(state, created, expires_at, resend, tail, account_digest, phone,
                               phone_j, client, mac)
  local digest = unhex(account_digest)
  if #digest ~= ACCOUNT_DIGEST_BYTES then
    error("account digest of the wrong length")
  end
  return struct.pack(">c1Bddd", state, 0, created, expires_at, resend) .. field(tail)
    .. digest .. field(pack_text(phone)) .. field(json_kept(phone, phone_j))
    .. field(pack_text(client)) .. pack_text(mac)
end

-- In-place updates (SETRANGE keeps the key's expiry): the state byte, the attempts byte.
local function set_challenge_state(key, state)
  redis.call("SETRANGE", key, 0, string.sub(state, 1, 1))
end
local function set_challenge_attempts(key, attempts)
  if attempts > 255 then
    error("attempts out of range")
  end
  redis.call("SETRANGE", key, 1, string.char(attempts))
end

-- A list of send times packed as doubles (one string), and back.
local function times_of(raw, pos)
  local t = {}
  pos = pos or 1
  while pos <= #raw do
    t[#t + 1], pos = struct.unpack(">d", raw, pos)
  end
  return t
end
local function times_bytes(t)
  local parts = {}
  for i, v in ipairs(t) do
    parts[i] = struct.pack(">d", v)
  end
  return table.concat(parts)
end

-- Sends strictly after `since`.
local function recent(t, since)
  local r = {}
  for _, v in ipairs(t) do
    if v > since then
      r[#r + 1] = v
    end
  end
  return r
end

-- Without one entry equal to `v` (the first), if any.
local function without(t, v)
  local r, done = {}, false
  for _, x in ipairs(t) do
    if x == v and not done then
      done = true
    else
      r[#r + 1] = x
    end
  end
  return r
end

-- Phone state (P2, P3) in `key`: one string: a flag byte (1 when the failure and lock state
-- follows: locked_until, fails, lock_level as doubles), last_send (a double; -inf: none),
-- then the number's send times of the last day.
local function phone_of(key)
  local ph = { locked_until = 0, fails = 0, level = 0, last_send = -math.huge, sends = {} }
  local raw = redis.call("GET", key)
  if not raw then
    return ph
  end
  local pos = 2
  if string.byte(raw, 1) == 1 then
    ph.locked_until, ph.fails, ph.level, pos = struct.unpack(">ddd", raw, 2)
  end
  ph.last_send, pos = struct.unpack(">d", raw, pos)
  ph.sends = times_of(raw, pos)
  return ph
end

-- Write the phone state; kept while the number is locked and for a day after now
-- (`keep_ttl`: the expiry stays as it is).
local function put_phone(key, ph, keep_ttl)
  local head = "\0"
  if ph.locked_until ~= 0 or ph.fails ~= 0 or ph.level ~= 0 then
    head = struct.pack(">Bddd", 1, ph.locked_until, ph.fails, ph.level)
  end
  local value = head .. struct.pack(">d", ph.last_send) .. times_bytes(ph.sends)
  if keep_ttl then
    redis.call("SET", key, value, "KEEPTTL")
  else
    redis.call("SET", key, value, "PX", ms_until(math.max(ph.locked_until, NOW) + DAY))
  end
end

-- The platform's send list: times as doubles, oldest first (kept sorted: a stepped-back clock
-- inserts in place), so the sends in a window are its tail.
local function list_count_after(key, since)
  -- Binary search for the first entry after `since`.
  local lo, hi = 0, redis.call("LLEN", key)
  local n = hi
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if struct.unpack(">d", redis.call("LINDEX", key, mid)) > since then
      hi = mid
    else
      lo = mid + 1
    end
  end
  return n - lo
end

local function list_insert(key, t)
  local later = {}
  while true do
    local tail = redis.call("LINDEX", key, -1)
    if not tail or struct.unpack(">d", tail) <= t then
      break
    end
    later[#later + 1] = redis.call("RPOP", key)
  end
  redis.call("RPUSH", key, struct.pack(">d", t))
  for i = #later, 1, -1 do
    redis.call("RPUSH", key, later[i])
  end
end

local function list_trim(key, through)
  while true do
    local head = redis.call("LINDEX", key, 0)
    if not head or struct.unpack(">d", head) > through then
      break
    end
    redis.call("LPOP", key)
  end
end

-- ---- keys by subject (redis.py names the same keys; docs/design/redis-cluster.md) --------
-- Every key is PREFIX .. "{<tag>}:<kind>...", tagged by the subject it protects: a number's
-- challenges and state share its tag, so each step below touches one cluster slot.

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

-- records.py number_tag: 12 bits of SHA-1 of the pseudonym, 2 base64url characters.
local function number_tag(phone)
  local h = tonumber(string.sub(redis.sha1hex("xacthuc number tag\31" .. phone), 1, 3), 16)
  local a, b = math.floor(h / 64) + 1, h % 64 + 1
  return string.sub(B64, a, a) .. string.sub(B64, b, b)
end

local function number_prefix(phone)
  return PREFIX .. "{n:" .. number_tag(phone) .. "}:"
end

-- The bucket of an address's sends (steps.lua reserve_ip): 8 bits of SHA-1 of its pseudonym.
local function ip_key(client)
  return PREFIX .. "{i:" .. string.sub(redis.sha1hex(client), 1, 2) .. "}:i"
end

-- records.py challenge_record and redis.py _challenge_key: an id of the service's form lives
-- under its tag, named "ch_" + the 11 characters after the tag; any other id under the tag
-- its own text hashes to, named by itself.
local function challenge_key(id)
  if #id == 25 and string.sub(id, 1, 3) == "ch_" and not string.find(id, "[^A-Za-z0-9_-]", 4) then
    return PREFIX .. "{n:" .. string.sub(id, 4, 5) .. "}:c:ch_" .. string.sub(id, 6, 16)
  end
  return PREFIX .. "{n:" .. number_tag(id) .. "}:c:" .. id
end

-- Take the "sending" challenge in `ch_key` (its table `c` from challenge_of) back from its
-- number, as if it never started: the challenge (and so its record's idempotency key) goes,
-- its send leaves the number's log and the cooldown runs from the latest send left (none: no
-- cooldown). Its platform and address entries are other subjects' (release_platform,
-- release_ip: the caller's next step). With `event`, audited ("code_send_failed": the gateway
-- refused it; "code_send_abandoned": its start died before confirming the send); without, a
-- start refused by a later budget step is undone silently (its refusal is the record).
local function unsend(ch_key, id_j, c, account_j, event)
  redis.call("DEL", ch_key)
  local ph_key = number_prefix(c.phone) .. "p:" .. c.phone
  local ph = phone_of(ph_key)
  ph.sends = without(ph.sends, c.created)
  ph.last_send = -math.huge
  for _, t in ipairs(ph.sends) do
    ph.last_send = math.max(ph.last_send, t)
  end
  if #ph.sends == 0 and ph.locked_until == 0 and ph.fails == 0 and ph.level == 0 then
    redis.call("DEL", ph_key)
  else
    put_phone(ph_key, ph, #ph.sends == 0)
  end
  if event then
    audit({
      account = account_j, event = q(event), outcome = q("failed"),
      reason = (event == "code_send_failed") and q("SMS_DELIVERY_FAILED") or '""',
      challenge = id_j, phone = c.phone_j,
    })
  end
end
