-- Prelude of every store script (redis.py puts it in front of each operation's body).
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
local PREFIX = P.prefix -- "<namespace>:{<platform>}:", the hash tag shared by every key
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

-- The `time` (JSON text) of the next record of the audit list `key`: never before the last
-- record's, so times in a log never go backwards (a request that read the clock before another
-- step was appended, another replica's clock). RFC 3339 UTC with milliseconds compares as
-- text. Python's audit_record(not_before=...) does the same for the in-memory store.
local function audit_time(key)
  local last = redis.call("LINDEX", key, -1)
  if last then
    local t = string.match(last, '"time":("[^"]*")')
    if t and t > P.time_j then
      return t
    end
  end
  return P.time_j
end

-- With `P.outbox` (an audit log kept in PostgreSQL, issue 10), records are not appended
-- here: they collect in OUTBOX, which the script returns with its reply ({OUTBOX, reply},
-- see redis.py `_lua`), and PostgreSQL numbers them (seq 0 here), keeps their times from
-- going backwards and stores them before the call answers.
local OUTBOX = nil
if P.outbox then
  OUTBOX = {}
end

-- Append one record to the platform's audit list; `fields` maps names to JSON texts.
local function audit(key, fields)
  local f = { v = P.audit_version, platform = P.platform_j, reason = '""' }
  if OUTBOX then
    f.time = P.time_j
  else
    f.time = audit_time(key)
  end
  for name, value in pairs(fields) do
    if not AUDIT_KNOWN[name] then
      error("unknown audit field " .. name)
    end
    f[name] = value
  end
  if OUTBOX then
    f.seq = "0"
  else
    f.seq = int(redis.call("LLEN", key))
  end
  local parts = {}
  for _, name in ipairs(AUDIT_FIELDS) do
    local value = f[name]
    if value ~= nil and (AUDIT_BASE[name] or value ~= '""') then
      parts[#parts + 1] = '"' .. name .. '":' .. value
    end
  end
  local record = "{" .. table.concat(parts, ",") .. "}"
  if OUTBOX then
    OUTBOX[#OUTBOX + 1] = record
  else
    redis.call("RPUSH", key, record)
  end
end

-- Append a record Python rendered around its sequence number (P.head .. seq .. P.tail, byte
-- for byte what the in-memory store writes) to the audit list `key`: with OUTBOX, seq 0 and
-- PostgreSQL numbers it; here, the next index, and the record's time moved up to the last
-- record's when it is earlier (audit_time). Returns the index (0 with OUTBOX).
local function audit_rendered(key)
  if OUTBOX then
    OUTBOX[#OUTBOX + 1] = P.head .. "0" .. P.tail
    return 0
  end
  local n = redis.call("LLEN", key)
  local tail = P.tail
  local time = audit_time(key)
  if time ~= P.time_j then -- the record's time, in the tail after seq
    local i, j = string.find(tail, '"time":' .. P.time_j, 1, true)
    tail = string.sub(tail, 1, i - 1) .. '"time":' .. time .. string.sub(tail, j + 1)
  end
  redis.call("RPUSH", key, P.head .. int(n) .. tail)
  return n
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

-- The set of accounts a subject (phone or personal-ID pseudonym) verifies (P8).
local function subject_accounts_key(subject)
  if string.sub(subject, 1, 3) == "id_" then
    return PREFIX .. "idacct:" .. subject
  end
  return PREFIX .. "phacct:" .. subject
end

-- Tell every process that caches account state (adapters/store/cached.py) that `key`, an
-- acct:<account> or lock:<account> key, changed: published on "<namespace>:inv" in the same
-- atomic step as the change (redis_invalidations.py listens).
local function invalidate(key)
  redis.call("PUBLISH", PREFIX:sub(1, PREFIX:find("{", 1, true) - 2) .. ":inv", key)
end

-- Make the account's attestation hash `fields`, moving its P8 slot to `subject` (none when
-- `subject` is "": a guardian-managed child takes no slot of the guardian's).
local function attest(acct_key, account, subject, fields)
  local prev = redis.call("HMGET", acct_key, "phone", "personal_id")
  for _, old in ipairs(prev) do
    if old and old ~= "" and old ~= subject then
      redis.call("SREM", subject_accounts_key(old), account)
    end
  end
  if subject ~= "" then
    redis.call("SADD", subject_accounts_key(subject), account)
  end
  redis.call("DEL", acct_key)
  redis.call("HSET", acct_key, unpack(fields))
  invalidate(acct_key)
  -- Every index issued to the account, for its locks (R7: a lock marks all of them).
  local idx = tonumber(redis.call("HGET", acct_key, "status_idx")) or -1
  if idx >= 0 then
    redis.call("SADD", PREFIX .. "acctsl:" .. account, int(idx))
  end
end

-- A hash as a table (empty when the key does not exist).
local function hash_of(key)
  local t = {}
  local raw = redis.call("HGETALL", key)
  for i = 1, #raw, 2 do
    t[raw[i]] = raw[i + 1]
  end
  return t
end

-- An attestation hash as a table (empty when the account has none).
local attestation_of = hash_of

-- HMAC-SHA1 (hex) of `msg` under the 64-byte `key` (SHA-1's block size: used as is).
local function hmac_sha1_hex(ipad, opad, msg)
  local inner = redis.sha1hex(ipad .. msg)
  local raw = string.gsub(inner, "..", function(h)
    return string.char(tonumber(h, 16))
  end)
  return redis.sha1hex(opad .. raw)
end

-- The status list (issues 5 and 13): the platform's next token's index, pseudorandom within
-- its block and never one handed out before; status_index.py, line for line. The first
-- allocation fixes the platform's key and block size from P.sl_key and P.sl_block (a store
-- that handed out sequential indices before goes on at the next whole block); opening a
-- block grows the bitmap to cover all of it with zero bits (only when it is shorter, so no
-- revoked bit is ever cleared).
local function next_status_idx()
  local conf_key, next_key = PREFIX .. "sl:key", PREFIX .. "sl:next"
  local conf = redis.call("HMGET", conf_key, "key", "block")
  local key, block = conf[1], tonumber(conf[2])
  if not key then
    key, block = P.sl_key, tonumber(P.sl_block)
    redis.call("HSET", conf_key, "key", key, "block", int(block))
    local legacy = tonumber(redis.call("GET", next_key)) or 0
    redis.call("SET", next_key, int(math.ceil(legacy / block) * block))
  end
  local counter = redis.call("INCR", next_key) - 1
  local block_no = math.floor(counter / block)
  local bits_key = PREFIX .. "sl:bits"
  local need = (block_no + 1) * block / 8
  if redis.call("STRLEN", bits_key) < need then
    redis.call("SETBIT", bits_key, need * 8 - 1, 0)
  end
  local ipad, opad = {}, {}
  for i = 1, #key do
    local k = string.byte(key, i)
    ipad[i] = string.char(bit.bxor(k, 0x36))
    opad[i] = string.char(bit.bxor(k, 0x5c))
  end
  ipad, opad = table.concat(ipad), table.concat(opad)
  local h = 0 -- ceil(log2(block) / 2)
  while 2 ^ (2 * h) < block do
    h = h + 1
  end
  local modulus = 2 ^ h
  local x = counter % block
  repeat -- cycle walking: ends, since x's cycle under the permutation returns to x
    local left, right = math.floor(x / modulus), x % modulus
    for r = 0, 7 do -- ROUNDS
      local hex = hmac_sha1_hex(ipad, opad, int(block_no) .. ":" .. int(r) .. ":" .. int(right))
      local f = tonumber(string.sub(hex, 1, 8), 16) % modulus
      left, right = right, bit.bxor(left, f)
    end
    x = left * modulus + right
  until x < block
  return block_no * block + x
end

-- Revoke the attestation in `acct_key` (its current fields `a`, from attestation_of): status
-- "revoked", bit `status_idx` set in the platform's bitmap (SETBIT: index 0 is the most
-- significant bit of byte 0), audited `attestation_revoked` with `reason_j`.
local function revoke(acct_key, audit_key, account_j, a, reason_j)
  redis.call("HSET", acct_key, "status", "revoked", "revoked_at", P.now)
  invalidate(acct_key)
  local idx = tonumber(a.status_idx) or -1
  if idx >= 0 then
    redis.call("SETBIT", PREFIX .. "sl:bits", idx, 1)
  end
  audit(audit_key, {
    account = account_j, event = q("attestation_revoked"), outcome = q("ok"), reason = reason_j,
    -- token_id_j is stored with every attestation written since the status list exists;
    -- older token ids were URL-safe ASCII, which q() quotes exactly as JSON does.
    token_id = a.token_id_j or q(a.token_id), status_idx = (idx >= 0) and int(idx) or '""',
  })
end

-- The attestation `a` (a table from attestation_of) is active and not expired.
local function active(a)
  return a.status == "active" and (tonumber(a.expires_at) or 0) > NOW
end

-- The account has an active guardian link and the child has not turned 16 (R1).
local function linked_child(account)
  local aged_out_at = tonumber(redis.call("ZSCORE", PREFIX .. "agingout", account))
  return aged_out_at ~= nil and aged_out_at > NOW
end

-- End the active guardian link `l` (its hash as a table): mark it, drop it from the child
-- pointer, the guardian's children and the aging-out index, audit `guardian_link_ended`.
local function end_link(l, reason, reason_j, audit_key)
  redis.call("HSET", PREFIX .. "link:" .. l.link_id, "ended", P.now, "end_reason", reason)
  redis.call("DEL", PREFIX .. "childlink:" .. l.child)
  redis.call("SREM", PREFIX .. "gkids:" .. l.guardian, l.child)
  redis.call("ZREM", PREFIX .. "agingout", l.child)
  audit(audit_key, {
    account = l.child_j, event = q("guardian_link_ended"), outcome = q("ok"), reason = reason_j,
    link = l.link_j, guardian = l.guardian_j,
  })
end

-- ---- compact challenge state (issue 11: bytes per pending challenge) ------------------
-- A pending challenge costs three small keys (c:, p:, i:) and one entry of the platform's
-- send list; each value is packed: times as 8-byte doubles (struct ">d", the caller's exact
-- doubles), hex pseudonyms and MACs as raw bytes. Redis spends ~150 bytes on a key whatever
-- its value, so every field is as short as it can be and nothing is stored twice.

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
-- record holds another challenge of the same slot). A record is named by its id's first 14
-- characters (records.py: the idempotency key's slot), so it keeps the rest, `tail`. Layout:
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

-- Undo the start of the "sending" challenge in `ch_key` (JSON text of its id `id_j`, its table
-- `c` from challenge_of, JSON text of its account `account_j`) as if it never happened: the
-- challenge (and so its idempotency key, the same record), its budget entries and the
-- cooldown; audit `event` ("code_send_failed":
-- the gateway refused it; "code_send_abandoned": its start died before confirming the send).
-- The keys named by the challenge are built from PREFIX and the stored pseudonyms; they carry
-- the platform's hash tag, so they live in the caller's slot.
local function unsend(ch_key, id_j, c, account_j, event, audit_key)
  redis.call("DEL", ch_key)
  redis.call("LREM", PREFIX .. "pl", -1, struct.pack(">d", c.created))
  local ip_key = PREFIX .. "i:" .. c.client
  local ip = redis.call("GET", ip_key)
  if ip then
    local rest = without(times_of(ip), c.created)
    if #rest > 0 then
      redis.call("SET", ip_key, times_bytes(rest), "KEEPTTL")
    else
      redis.call("DEL", ip_key)
    end
  end
  -- The cooldown runs from the latest send that is left (none: no cooldown).
  local ph_key = PREFIX .. "p:" .. c.phone
  local ph = phone_of(ph_key)
  ph.sends = without(ph.sends, c.created)
  ph.last_send = -math.huge
  for _, t in ipairs(ph.sends) do
    ph.last_send = math.max(ph.last_send, t)
  end
  put_phone(ph_key, ph, #ph.sends == 0)
  audit(audit_key, {
    account = account_j, event = q(event), outcome = q("failed"),
    reason = (event == "code_send_failed") and q("SMS_DELIVERY_FAILED") or '""',
    challenge = id_j, phone = c.phone_j,
  })
end
