-- 0002: the durable state of the store (issue 10; docs/design/system-of-record.md): each
-- account's attestation, every status-list token issued and its revocation, the status
-- index allocation, the accounts per phone number and per personal-ID number (P8), and the
-- building blocks every state-changing function uses: audit records rendered here exactly
-- as Python's audit_record() renders them, the status-index permutation, attest, revoke.
-- Every table leads with `platform` (Citus: distributed by platform, co-located).

-- HMAC-SHA1 for the status-index permutation (a trusted extension since PostgreSQL 13).
CREATE EXTENSION IF NOT EXISTS pgcrypto;

-- ---- JSON and audit records ---------------------------------------------------------------

-- A string as JSON text exactly as Python's json.dumps() writes it (ensure_ascii: every
-- character outside ' '..'~' as \uXXXX, DEL included, lowercase hex, surrogate pairs above
-- U+FFFF; to_json already escapes the control characters below ' ').
CREATE FUNCTION xacthuc_json(p text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v   text := to_json(p)::text;
    out text := '';
    c   text;
    n   integer;
BEGIN
    IF v !~ '[^\x01-\x7e]' THEN
        RETURN v;
    END IF;
    FOREACH c IN ARRAY regexp_split_to_array(v, '') LOOP
        n := ascii(c);
        IF n < 127 THEN
            out := out || c;
        ELSIF n < 65536 THEN
            out := out || '\u' || lpad(to_hex(n), 4, '0');
        ELSE
            n := n - 65536;
            out := out || '\u' || to_hex(55296 + (n >> 10)) || '\u' || to_hex(56320 + (n & 1023));
        END IF;
    END LOOP;
    RETURN out;
END
$$;

-- The audit record format version (records.AUDIT_FORMAT_VERSION; a test keeps them equal).
CREATE FUNCTION xacthuc_audit_version() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1 $$;

-- A record's text around its index, as audit_record() renders it: sorted keys, compact,
-- ASCII; `p_extra` holds the extra fields (strings, or integers written bare), an extra equal
-- to "" left out. `o_head` ends with '"seq":', `o_tail` is the rest (xacthuc_append_audit).
CREATE FUNCTION xacthuc_audit_parts(
    p_platform text,
    p_time_j   text,
    p_account  text,
    p_event    text,
    p_outcome  text,
    p_reason   text,
    p_extra    jsonb,
    OUT o_head text,
    OUT o_tail text
) LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_parts text[] := '{}';
    v_key   text;
    v_value text;
BEGIN
    FOR v_key, v_value IN
        SELECT k, val FROM (
            SELECT 'account' AS k, xacthuc_json(p_account) AS val
            UNION ALL SELECT 'event', xacthuc_json(p_event)
            UNION ALL SELECT 'outcome', xacthuc_json(p_outcome)
            UNION ALL SELECT 'platform', xacthuc_json(p_platform)
            UNION ALL SELECT 'reason', xacthuc_json(p_reason)
            UNION ALL SELECT 'seq', NULL
            UNION ALL SELECT 'time', p_time_j
            UNION ALL SELECT 'v', xacthuc_audit_version()::text
            UNION ALL
            SELECT e.key, CASE jsonb_typeof(e.value)
                              WHEN 'string' THEN xacthuc_json(e.value #>> '{}')
                              ELSE e.value::text END
              FROM jsonb_each(p_extra) AS e
             WHERE e.value <> '""'::jsonb
               AND e.key NOT IN ('account', 'event', 'outcome', 'platform', 'reason', 'seq',
                                 'time', 'v')
        ) AS f
        ORDER BY k COLLATE "C"
    LOOP
        IF v_key = 'seq' THEN
            o_head := '{' || array_to_string(v_parts, ',')
                || CASE WHEN cardinality(v_parts) > 0 THEN ',' ELSE '' END || '"seq":';
            v_parts := '{}';
        ELSE
            v_parts := v_parts || (xacthuc_json(v_key) || ':' || v_value);
        END IF;
    END LOOP;
    o_tail := CASE WHEN cardinality(v_parts) > 0 THEN ',' ELSE '' END
        || array_to_string(v_parts, ',') || '}';
END
$$;

-- Append one audit record (xacthuc_audit_parts renders it); `p_time_j` is the record's time
-- as JSON text, rendered by the caller (rfc3339 of its `now`). Numbered and stored by
-- xacthuc_append_audit (0001): gap-free index, time never before the previous record's, leaf
-- hash. Returns the record's index. (0006 lets a batch defer the append.)
CREATE FUNCTION xacthuc_audit(
    p_platform text,
    p_time_j   text,
    p_account  text,
    p_event    text,
    p_outcome  text,
    p_reason   text DEFAULT '',
    p_extra    jsonb DEFAULT '{}'
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_r record;
BEGIN
    v_r := xacthuc_audit_parts(p_platform, p_time_j, p_account, p_event, p_outcome, p_reason,
                               p_extra);
    RETURN xacthuc_append_audit(p_platform, ARRAY[v_r.o_head], ARRAY[v_r.o_tail],
                                ARRAY[p_time_j], ARRAY[p_event], ARRAY[p_account]);
END
$$;

-- ---- the status list ------------------------------------------------------------------------

-- Per platform: the token counter (`next`), the index key (64 hex characters, drawn by the
-- caller at the first allocation and never changed) and the block size (status_index.py).
CREATE TABLE status_heads (
    platform text PRIMARY KEY,
    next     bigint NOT NULL DEFAULT 0 CHECK (next >= 0),
    key      text NOT NULL CHECK (key ~ '^[0-9a-f]{64}$'),
    block    integer NOT NULL CHECK (block >= 8 AND (block & (block - 1)) = 0)
);

-- Every token issued: its index (unique, never reused), the account, the operation that
-- issued it (`issued_by`: the challenge id, the ID attempt id, the link operation; unique, so
-- an issuing step run twice issues once) and whether it is revoked (its status bit).
CREATE TABLE status_tokens (
    platform  text NOT NULL,
    idx       bigint NOT NULL CHECK (idx >= 0),
    account   text NOT NULL,
    token_id  text NOT NULL,
    issued_by text NOT NULL,
    revoked   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (platform, idx),
    UNIQUE (platform, issued_by)
);
CREATE INDEX status_tokens_account ON status_tokens (platform, account);
CREATE INDEX status_tokens_revoked ON status_tokens (platform, idx) WHERE revoked;

-- status_index.permuted_index, line for line (a test compares them over many counters).
CREATE FUNCTION xacthuc_permuted_index(p_key text, p_counter bigint, p_block bigint)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_block_no bigint := p_counter / p_block;
    v_x        bigint := p_counter % p_block;
    v_h        integer := 0;
    v_mod      bigint;
    v_left     bigint;
    v_right    bigint;
    v_f        bigint;
    v_t        bigint;
BEGIN
    -- h = block.bit_length() // 2
    v_t := p_block;
    WHILE v_t > 0 LOOP
        v_h := v_h + 1;
        v_t := v_t >> 1;
    END LOOP;
    v_h := v_h / 2;
    v_mod := 1::bigint << v_h;
    LOOP -- cycle walking: ends, since x's cycle under the permutation returns to x
        v_left := v_x >> v_h;
        v_right := v_x % v_mod;
        FOR r IN 0 .. 7 LOOP -- ROUNDS
            v_f := ('x' || substr(encode(hmac(
                       v_block_no::text || ':' || r::text || ':' || v_right::text,
                       p_key, 'sha1'), 'hex'), 1, 8))::bit(32)::bigint;
            IF v_f < 0 THEN
                v_f := v_f + 4294967296;
            END IF;
            v_t := v_right;
            v_right := v_left # (v_f % v_mod);
            v_left := v_t;
        END LOOP;
        v_x := (v_left << v_h) | v_right;
        EXIT WHEN v_x < p_block;
    END LOOP;
    RETURN v_block_no * p_block + v_x;
END
$$;

-- The platform's next token's index. The first allocation fixes the key and block size;
-- the head row stays locked until commit, so indices are unique (and a rolled-back
-- allocation gives its counter back).
CREATE FUNCTION xacthuc_next_status_idx(p_platform text, p_key text, p_block integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_counter bigint;
    v_key     text;
    v_block   integer;
BEGIN
    INSERT INTO status_heads (platform, key, block) VALUES (p_platform, p_key, p_block)
    ON CONFLICT (platform) DO NOTHING;
    UPDATE status_heads SET next = next + 1 WHERE platform = p_platform
    RETURNING next - 1, key, block INTO v_counter, v_key, v_block;
    RETURN xacthuc_permuted_index(v_key, v_counter, v_block);
END
$$;

-- The platform's status bitmap length in bytes: whole blocks, every block opened so far
-- (Store.status_bits: its length tells only how many blocks are open).
CREATE FUNCTION xacthuc_status_bytes(p_platform text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT ((next + block - 1) / block) * block / 8
                       FROM status_heads WHERE platform = p_platform), 0)
$$;

-- ---- attestations and the accounts per number (P8) -----------------------------------------

-- Each account's current attestation (AttestationRecord), with the pseudonym it was
-- verified with (`subject`: ph_/id_; "" for a guardian-managed child, who takes no slot of
-- the guardian's) and the operation that issued it.
CREATE TABLE attestations (
    platform              text NOT NULL,
    account               text NOT NULL,
    method                text NOT NULL,
    token_id              text NOT NULL,
    verified_at           double precision NOT NULL,
    issued_at             double precision NOT NULL,
    expires_at            double precision NOT NULL,
    status                text NOT NULL CHECK (status IN ('active', 'revoked', 'aged_out')),
    guardian_managed      boolean NOT NULL DEFAULT false,
    commercial_livestream boolean NOT NULL DEFAULT false,
    age_band              text NOT NULL DEFAULT '',
    guardian_ref          text NOT NULL DEFAULT '',
    aged_out_at           double precision,
    link_id               text NOT NULL DEFAULT '',
    status_idx            bigint NOT NULL DEFAULT -1,
    revoked_at            double precision,
    id_type               text NOT NULL DEFAULT '',
    subject               text NOT NULL DEFAULT '',
    issued_by             text NOT NULL,
    PRIMARY KEY (platform, account)
);

-- The accounts each subject (phone or personal-ID pseudonym) verifies (P8): an account holds
-- the slot of the subject of its current attestation.
CREATE TABLE subject_accounts (
    platform text NOT NULL,
    subject  text NOT NULL,
    account  text NOT NULL,
    PRIMARY KEY (platform, subject, account)
);

-- Serialise the P8 decisions on one subject (two accounts racing for the last slot): held
-- until commit. Take it before counting.
CREATE FUNCTION xacthuc_lock_subject(p_platform text, p_subject text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(p_platform || chr(31) || p_subject, 0))
$$;

-- Whether `p_account` may take a slot of `p_subject`: it holds one already, or fewer than
-- `p_max` accounts do. Call after xacthuc_lock_subject.
CREATE FUNCTION xacthuc_subject_has_room(
    p_platform text, p_subject text, p_account text, p_max integer
) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM subject_accounts
                    WHERE platform = p_platform AND subject = p_subject AND account = p_account)
        OR (SELECT count(*) FROM subject_accounts
             WHERE platform = p_platform AND subject = p_subject) < p_max
$$;

-- Tell every process that caches account state (adapters/store/cached.py) that the account's
-- attestation or lock changed; delivered at commit, only if the transaction commits.
CREATE FUNCTION xacthuc_invalidate(p_platform text, p_account text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('xacthuc_inv', json_build_array(p_platform, p_account)::text)
$$;

-- Make `p_a` the account's attestation (replacing the one it has), moving its P8 slot to
-- `p_a.subject` (none when ""), recording its status token (`p_a.status_idx`, issued by
-- `p_a.issued_by`; a token of an earlier attestation is left as it is: revoke it first when
-- it must stop being valid). The caller checked P8 (xacthuc_subject_has_room).
CREATE FUNCTION xacthuc_attest(p_a attestations) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_old text;
BEGIN
    SELECT subject INTO v_old FROM attestations
     WHERE platform = p_a.platform AND account = p_a.account;
    IF v_old IS NOT NULL AND v_old <> '' AND v_old <> p_a.subject THEN
        DELETE FROM subject_accounts
         WHERE platform = p_a.platform AND subject = v_old AND account = p_a.account;
    END IF;
    IF p_a.subject <> '' THEN
        INSERT INTO subject_accounts (platform, subject, account)
        VALUES (p_a.platform, p_a.subject, p_a.account) ON CONFLICT DO NOTHING;
    END IF;
    INSERT INTO attestations VALUES (p_a.*)
    ON CONFLICT (platform, account) DO UPDATE SET
        method = excluded.method, token_id = excluded.token_id,
        verified_at = excluded.verified_at, issued_at = excluded.issued_at,
        expires_at = excluded.expires_at, status = excluded.status,
        guardian_managed = excluded.guardian_managed,
        commercial_livestream = excluded.commercial_livestream, age_band = excluded.age_band,
        guardian_ref = excluded.guardian_ref, aged_out_at = excluded.aged_out_at,
        link_id = excluded.link_id, status_idx = excluded.status_idx,
        revoked_at = excluded.revoked_at, id_type = excluded.id_type,
        subject = excluded.subject, issued_by = excluded.issued_by;
    IF p_a.status_idx >= 0 THEN
        INSERT INTO status_tokens (platform, idx, account, token_id, issued_by)
        VALUES (p_a.platform, p_a.status_idx, p_a.account, p_a.token_id, p_a.issued_by);
    END IF;
    PERFORM xacthuc_invalidate(p_a.platform, p_a.account);
END
$$;

-- Revoke the account's current attestation `p_a` (as read, FOR UPDATE, by the caller):
-- status "revoked" at `p_now`, its status bit set, audited `attestation_revoked` with
-- `p_reason`. Returns the revoked row.
CREATE FUNCTION xacthuc_revoke(
    p_a attestations, p_now double precision, p_time_j text, p_reason text
) RETURNS attestations LANGUAGE plpgsql AS $$
DECLARE
    v_a attestations;
BEGIN
    UPDATE attestations SET status = 'revoked', revoked_at = p_now
     WHERE platform = p_a.platform AND account = p_a.account
    RETURNING * INTO v_a;
    IF p_a.status_idx >= 0 THEN
        UPDATE status_tokens SET revoked = true
         WHERE platform = p_a.platform AND idx = p_a.status_idx;
    END IF;
    PERFORM xacthuc_invalidate(p_a.platform, p_a.account);
    PERFORM xacthuc_audit(
        p_a.platform, p_time_j, p_a.account, 'attestation_revoked', 'ok', p_reason,
        jsonb_build_object(
            'token_id', p_a.token_id,
            'status_idx', CASE WHEN p_a.status_idx >= 0 THEN to_jsonb(p_a.status_idx)
                               ELSE '""'::jsonb END));
    RETURN v_a;
END
$$;

-- ---- guardian links (P6) and account locks (R7) ---------------------------------------------

-- Every guardian link, kept once ended (`ended`, `end_reason`). `guardian` is the pseudonym
-- (ph_/id_) the guardian's attestation verified; `aged_out_at` the child's 16th birthday.
-- A child has at most one active link (partial unique index).
CREATE TABLE guardian_links (
    platform         text NOT NULL,
    link_id          text NOT NULL,
    child            text COLLATE "C" NOT NULL,
    guardian_account text NOT NULL,
    guardian         text NOT NULL,
    relationship     text NOT NULL,
    method           text NOT NULL,
    child_consent    boolean NOT NULL,
    created          double precision NOT NULL,
    renewed          double precision NOT NULL,
    aged_out_at      double precision NOT NULL,
    ended            double precision,
    end_reason       text NOT NULL DEFAULT '',
    PRIMARY KEY (platform, link_id)
);
CREATE UNIQUE INDEX guardian_links_active_child ON guardian_links (platform, child)
    WHERE ended IS NULL;
CREATE INDEX guardian_links_active_guardian ON guardian_links (platform, guardian)
    WHERE ended IS NULL;
-- Aging out in order (aged_out_at, account id bytes): list_aging_out, sweep_aged_out.
CREATE INDEX guardian_links_aging ON guardian_links (platform, aged_out_at, child)
    WHERE ended IS NULL;

-- The account has an active guardian link and the child has not turned 16 (R1).
CREATE FUNCTION xacthuc_linked_child(p_platform text, p_account text, p_now double precision)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM guardian_links
                    WHERE platform = p_platform AND child = p_account AND ended IS NULL
                      AND aged_out_at > p_now)
$$;

-- Each account's latest lock (AccountLock), kept once lifted (`ended_at`, `unlock_reason`).
-- `lock_until` NULL: permanent.
CREATE TABLE account_locks (
    platform          text NOT NULL,
    account           text NOT NULL,
    kind              text NOT NULL,
    locked_at         double precision NOT NULL,
    lock_until        double precision,
    reason            text NOT NULL,
    request_reference text NOT NULL,
    temporary_locks   integer NOT NULL DEFAULT 0,
    ended_at          double precision,
    unlock_reason     text NOT NULL DEFAULT '',
    PRIMARY KEY (platform, account)
);
CREATE INDEX account_locks_holding ON account_locks (platform, lock_until) WHERE ended_at IS NULL;

-- ---- the durable steps of the store's operations (adapters/store/pair.py) ------------------
-- Each is one call, one round trip, one transaction: its checks, writes and audit records
-- commit together or not at all. Each is idempotent under the operation's key (`issued_by`):
-- run again after a crash or a lost reply, it returns what the first run committed.

-- What a start (phone) or an ID attempt needs to know of the durable state before its Redis
-- step: the account is a linked child under 16 (R1); `p_subject` has room for the account
-- (P8, read without the lock: the issuing step decides again under it); the account's
-- attestation is active and not expired, and guardian-managed (R4's livestream upgrade).
CREATE FUNCTION xacthuc_facts(
    p_platform text, p_account text, p_subject text, p_now double precision, p_max integer,
    OUT linked boolean, OUT has_room boolean, OUT active boolean, OUT guardian_managed boolean
) LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_a attestations;
BEGIN
    linked := xacthuc_linked_child(p_platform, p_account, p_now);
    has_room := p_subject = '' OR xacthuc_subject_has_room(p_platform, p_subject, p_account, p_max);
    SELECT * INTO v_a FROM attestations WHERE platform = p_platform AND account = p_account;
    active := v_a.account IS NOT NULL AND v_a.status = 'active' AND v_a.expires_at > p_now;
    guardian_managed := coalesce(v_a.guardian_managed, false);
END
$$;

-- The issuing step of an operation keyed `p_issued_by` (a challenge id, an ID attempt id),
-- serialised with any other run of the same key: held until commit.
CREATE FUNCTION xacthuc_lock_issue(p_platform text, p_issued_by text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(p_platform || chr(30) || p_issued_by, 0))
$$;

-- Issue the attestation of a phone challenge whose right code Redis accepted (check_code):
-- R1 (a linked child: GUARDIAN_REQUIRED), P8 for the number (PHONE_ACCOUNT_LIMIT), then the
-- attestation with a new status index, `check_ok` and `attestation_issued`. Idempotent on
-- the challenge id: once it issued, the same call returns that attestation while it is
-- still the account's active one, else CHALLENGE_ALREADY_USED. A refusal is audited
-- `check_failed`. `p_pending`: method, token_id, issued_at, expires_at, age_band.
-- o_reason "" and o_a the attestation, or o_reason the refusal.
CREATE FUNCTION xacthuc_issue_phone(
    p_platform text, p_challenge text, p_account text, p_phone text,
    p_now double precision, p_time_j text, p_pending jsonb, p_max integer,
    p_sl_key text, p_sl_block integer,
    OUT o_reason text, OUT o_a attestations
) LANGUAGE plpgsql AS $$
DECLARE
    v_cur attestations;
    v_ctx jsonb := jsonb_build_object('challenge', p_challenge, 'phone', p_phone);
BEGIN
    PERFORM xacthuc_lock_issue(p_platform, p_challenge);
    SELECT * INTO v_cur FROM attestations WHERE platform = p_platform AND account = p_account;
    IF EXISTS (SELECT 1 FROM status_tokens WHERE platform = p_platform
                                            AND issued_by = p_challenge) THEN
        IF v_cur.issued_by = p_challenge AND v_cur.status = 'active' THEN
            o_reason := '';
            o_a := v_cur;
        ELSE
            o_reason := 'CHALLENGE_ALREADY_USED';
        END IF;
    ELSIF xacthuc_linked_child(p_platform, p_account, p_now) THEN
        o_reason := 'GUARDIAN_REQUIRED';
    ELSE
        PERFORM xacthuc_lock_subject(p_platform, p_phone);
        IF NOT xacthuc_subject_has_room(p_platform, p_phone, p_account, p_max) THEN
            o_reason := 'PHONE_ACCOUNT_LIMIT';
        ELSE
            o_reason := '';
            o_a := ROW(p_platform, p_account, p_pending ->> 'method', p_pending ->> 'token_id',
                       p_now, (p_pending ->> 'issued_at')::double precision,
                       (p_pending ->> 'expires_at')::double precision, 'active', false, false,
                       p_pending ->> 'age_band', '', NULL, '',
                       xacthuc_next_status_idx(p_platform, p_sl_key, p_sl_block), NULL, '',
                       p_phone, p_challenge)::attestations;
            PERFORM xacthuc_attest(o_a);
            PERFORM xacthuc_audit(p_platform, p_time_j, p_account, 'check_ok', 'ok', '', v_ctx);
            PERFORM xacthuc_audit(
                p_platform, p_time_j, p_account, 'attestation_issued', 'ok', '',
                jsonb_build_object('token_id', o_a.token_id, 'method', o_a.method,
                                   'expires', floor(o_a.expires_at)::bigint));
            RETURN;
        END IF;
    END IF;
    IF o_reason <> '' THEN
        PERFORM xacthuc_audit(p_platform, p_time_j, p_account, 'check_failed', 'refused',
                              o_reason, v_ctx);
    END IF;
END
$$;

-- A confirm whose challenge Redis no longer has (flushed, or past its retention): the
-- attestation the challenge issued when it is still the account's active one (a retry after
-- a lost reply); otherwise CHALLENGE_NOT_FOUND (or CHALLENGE_ALREADY_USED when it issued one
-- to this account that was replaced or revoked since), audited `check_failed`.
CREATE FUNCTION xacthuc_phone_gone(
    p_platform text, p_challenge text, p_account text, p_time_j text,
    OUT o_reason text, OUT o_a attestations
) LANGUAGE plpgsql AS $$
DECLARE
    v_cur attestations;
BEGIN
    SELECT * INTO v_cur FROM attestations WHERE platform = p_platform AND account = p_account;
    IF v_cur.issued_by = p_challenge AND v_cur.status = 'active' THEN
        o_reason := '';
        o_a := v_cur;
        RETURN;
    END IF;
    o_reason := CASE WHEN EXISTS (SELECT 1 FROM status_tokens
                                   WHERE platform = p_platform AND issued_by = p_challenge
                                     AND account = p_account)
                     THEN 'CHALLENGE_ALREADY_USED' ELSE 'CHALLENGE_NOT_FOUND' END;
    PERFORM xacthuc_audit(p_platform, p_time_j, p_account, 'check_failed', 'refused', o_reason,
                          jsonb_build_object('challenge', p_challenge));
END
$$;

-- Issue the attestation of an ID attempt the registry matched (finish_id_check): P8 for the
-- number (PERSONAL_ID_ACCOUNT_LIMIT, audited `id_check` refused), then the attestation
-- (commercial livestream, the number's kind `id_type`), `id_check` ok and
-- `attestation_issued`. `p_ctx`: the attempt's record fields (attempt, personal_id, client,
-- purpose, id_type). Idempotent on the attempt id as xacthuc_issue_phone is on the challenge.
CREATE FUNCTION xacthuc_issue_id(
    p_platform text, p_attempt text, p_account text, p_subject text,
    p_now double precision, p_time_j text, p_pending jsonb, p_ctx jsonb, p_max integer,
    p_sl_key text, p_sl_block integer,
    OUT o_reason text, OUT o_a attestations
) LANGUAGE plpgsql AS $$
DECLARE
    v_cur attestations;
    v_ctx jsonb := p_ctx || jsonb_build_object('refunded', 'personal_id');
BEGIN
    PERFORM xacthuc_lock_issue(p_platform, p_attempt);
    SELECT * INTO v_cur FROM attestations WHERE platform = p_platform AND account = p_account;
    IF EXISTS (SELECT 1 FROM status_tokens WHERE platform = p_platform
                                            AND issued_by = p_attempt) THEN
        IF v_cur.issued_by = p_attempt AND v_cur.status = 'active' THEN
            o_reason := '';
            o_a := v_cur;
        ELSE
            o_reason := 'CHALLENGE_ALREADY_USED';
        END IF;
        RETURN;
    END IF;
    PERFORM xacthuc_lock_subject(p_platform, p_subject);
    IF NOT xacthuc_subject_has_room(p_platform, p_subject, p_account, p_max) THEN
        o_reason := 'PERSONAL_ID_ACCOUNT_LIMIT';
        PERFORM xacthuc_audit(p_platform, p_time_j, p_account, 'id_check', 'refused', o_reason,
                              v_ctx);
        RETURN;
    END IF;
    o_reason := '';
    o_a := ROW(p_platform, p_account, p_pending ->> 'method', p_pending ->> 'token_id',
               p_now, (p_pending ->> 'issued_at')::double precision,
               (p_pending ->> 'expires_at')::double precision, 'active', false, true,
               p_pending ->> 'age_band', '', NULL, '',
               xacthuc_next_status_idx(p_platform, p_sl_key, p_sl_block), NULL,
               p_pending ->> 'id_type', p_subject, p_attempt)::attestations;
    PERFORM xacthuc_attest(o_a);
    PERFORM xacthuc_audit(p_platform, p_time_j, p_account, 'id_check', 'ok', '', v_ctx);
    PERFORM xacthuc_audit(
        p_platform, p_time_j, p_account, 'attestation_issued', 'ok', '',
        jsonb_build_object('token_id', o_a.token_id, 'method', o_a.method,
                           'expires', floor(o_a.expires_at)::bigint,
                           'commercial_livestream', 1, 'age_band', o_a.age_band,
                           'id_type', o_a.id_type));
END
$$;

-- Revoke the account's attestation (revoke_attestation): idempotent, a revoked one is
-- returned as it is; NULL when the account has none.
CREATE FUNCTION xacthuc_revoke_account(
    p_platform text, p_account text, p_now double precision, p_time_j text, p_reason text
) RETURNS attestations LANGUAGE plpgsql AS $$
DECLARE
    v_a attestations;
BEGIN
    SELECT * INTO v_a FROM attestations WHERE platform = p_platform AND account = p_account
    FOR UPDATE;
    IF v_a.account IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_a.status <> 'revoked' THEN
        v_a := xacthuc_revoke(v_a, p_now, p_time_j, p_reason);
    END IF;
    RETURN v_a;
END
$$;

-- The platform's status bitmap (Store.status_bits): whole blocks of every block opened,
-- bit i set (index 0: the most significant bit of byte 0) when token i is revoked.
CREATE FUNCTION xacthuc_status_bitmap(p_platform text) RETURNS bytea
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_bits bytea := decode(repeat('00', xacthuc_status_bytes(p_platform)::integer), 'hex');
    v_idx  bigint;
BEGIN
    FOR v_idx IN SELECT idx FROM status_tokens WHERE platform = p_platform AND revoked LOOP
        v_bits := set_byte(v_bits, (v_idx / 8)::integer,
                           get_byte(v_bits, (v_idx / 8)::integer) | (128 >> (v_idx % 8)::integer));
    END LOOP;
    RETURN v_bits;
END
$$;
