-- 0007: cheaper durable steps (issues 10 and 11: Confirm's and VerifyPersonalId's PostgreSQL
-- CPU; benchmarks/pg_steps.py measures it, benchmarks/README.md "Durability on" has the
-- figures). Same tables, same locks in the same order, same records byte for byte; less
-- work per op:
--
-- * the records of an issuing step that issues (check_ok or id_check ok, attestation_issued)
--   are rendered by the pair store in Python (`audit_record()`, the renderer every store
--   uses) and passed in the op; the step returns `o_new` and the batch appends them. The
--   refusals' records are still rendered here (xacthuc_audit_parts, 0002), as are those of
--   the other steps;
-- * a batch takes its status counters from the head it locked once, in memory
--   (transaction-local settings read by xacthuc_next_status_idx), and writes the head once at
--   its end, instead of one UPDATE of the same row per token (each a new row version that
--   the next one had to walk to);
-- * xacthuc_append_audit stores its records in one INSERT ... SELECT instead of one INSERT per
--   record (each INSERT into the partitioned table sets up its routing and the partition's
--   six indexes again);
-- * the status-index permutation takes its round function's bytes with get_byte instead of
--   through hex text (same results: test_pg_state_sql.py compares it with status_index.py);
-- * 0002's small helpers the steps call (R1's linked child, P8's room, the advisory locks, the
--   NOTIFY) are plpgsql instead of SQL functions, same bodies: called from plpgsql, a SQL
--   function that is not inlined is planned again in every transaction (its plan lives in the
--   transaction's expression state), a plpgsql one keeps its plans for the session. A batch of
--   one op spent more on those plans than on its work.

-- ---- the append, set-based ------------------------------------------------------------------

-- As in 0001: record i is heads[i] || <index> || tails[i], its time (times[i], JSON text inside
-- tails[i]) moved up to the latest time before it (the previous records' and the log's), its
-- leaf hash SHA-256(0x00 || record). Returns the index of the first record.
CREATE OR REPLACE FUNCTION xacthuc_append_audit(
    p_platform text,
    p_heads    text[],
    p_tails    text[],
    p_times    text[],
    p_events   text[],
    p_accounts text[]
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_first bigint;
    v_last  text COLLATE "C";
    v_n     integer := coalesce(array_length(p_heads, 1), 0);
BEGIN
    INSERT INTO log_heads (platform) VALUES (p_platform) ON CONFLICT (platform) DO NOTHING;
    SELECT size, last_time INTO v_first, v_last
      FROM log_heads WHERE platform = p_platform FOR UPDATE;
    IF v_n = 0 THEN
        RETURN v_first;
    END IF;
    WITH r AS (
        SELECT u.n, u.h, u.tl, u.tm, u.e, u.ac,
               greatest(v_last, max(u.tm COLLATE "C") OVER (ORDER BY u.n)) AS t
          FROM unnest(p_heads, p_tails, p_times, p_events, p_accounts)
               WITH ORDINALITY AS u(h, tl, tm, e, ac, n)
    ), b AS (
        SELECT r.n, r.t, r.e, r.ac,
               r.h || (v_first + r.n - 1)::text
                   || replace(r.tl, '"time":' || r.tm, '"time":' || r.t) AS body
          FROM r
    ), ins AS (
        INSERT INTO audit_records (platform, idx, recorded_at, event, account, body, leaf_hash)
        SELECT p_platform, v_first + b.n - 1, btrim(b.t, '"')::timestamptz, b.e, b.ac, b.body,
               sha256('\x00'::bytea || convert_to(b.body, 'UTF8'))
          FROM b
    )
    SELECT max(t) INTO v_last FROM r;
    UPDATE log_heads SET size = v_first + v_n, last_time = v_last WHERE platform = p_platform;
    RETURN v_first;
END
$$;

-- ---- 0002's helpers, as plpgsql (their plans kept for the session) --------------------------

CREATE OR REPLACE FUNCTION xacthuc_lock_subject(p_platform text, p_subject text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_platform || chr(31) || p_subject, 0));
END
$$;

CREATE OR REPLACE FUNCTION xacthuc_lock_issue(p_platform text, p_issued_by text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_platform || chr(30) || p_issued_by, 0));
END
$$;

CREATE OR REPLACE FUNCTION xacthuc_subject_has_room(
    p_platform text, p_subject text, p_account text, p_max integer
) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM subject_accounts
                    WHERE platform = p_platform AND subject = p_subject AND account = p_account)
        OR (SELECT count(*) FROM subject_accounts
             WHERE platform = p_platform AND subject = p_subject) < p_max;
END
$$;

CREATE OR REPLACE FUNCTION xacthuc_linked_child(
    p_platform text, p_account text, p_now double precision
) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM guardian_links
                    WHERE platform = p_platform AND child = p_account AND ended IS NULL
                      AND aged_out_at > p_now);
END
$$;

CREATE OR REPLACE FUNCTION xacthuc_invalidate(p_platform text, p_account text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('xacthuc_inv', json_build_array(p_platform, p_account)::text);
END
$$;

-- ---- the status index -----------------------------------------------------------------------

-- status_index.permuted_index, line for line (0002's, with the round function's first four
-- bytes read by get_byte; `% modulus` is `& (modulus - 1)`, the modulus a power of two).
CREATE OR REPLACE FUNCTION xacthuc_permuted_index(p_key text, p_counter bigint, p_block bigint)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_key    bytea := convert_to(p_key, 'UTF8');
    v_block_no bigint := p_counter / p_block;
    v_prefix text := (p_counter / p_block)::text || ':';
    v_x      bigint := p_counter % p_block;
    v_h      integer := 0;
    v_mask   bigint;
    v_left   bigint;
    v_right  bigint;
    v_d      bytea;
    v_t      bigint;
BEGIN
    -- h = block.bit_length() // 2
    v_t := p_block;
    WHILE v_t > 0 LOOP
        v_h := v_h + 1;
        v_t := v_t >> 1;
    END LOOP;
    v_h := v_h / 2;
    v_mask := (1::bigint << v_h) - 1;
    LOOP -- cycle walking: ends, since x's cycle under the permutation returns to x
        v_left := v_x >> v_h;
        v_right := v_x & v_mask;
        FOR r IN 0 .. 7 LOOP -- ROUNDS
            v_d := hmac(convert_to(v_prefix || r || ':' || v_right, 'UTF8'), v_key, 'sha1');
            v_t := v_right;
            v_right := v_left # (((get_byte(v_d, 0)::bigint << 24) | (get_byte(v_d, 1) << 16)
                                  | (get_byte(v_d, 2) << 8) | get_byte(v_d, 3)) & v_mask);
            v_left := v_t;
        END LOOP;
        v_x := (v_left << v_h) | v_right;
        EXIT WHEN v_x < p_block;
    END LOOP;
    RETURN v_block_no * p_block + v_x;
END
$$;

-- The platform's next token's index, as 0002's. Inside xacthuc_batch (the transaction-local
-- setting xacthuc.sl_next, the head's counter the batch read under its lock) the counter is
-- taken from the setting and the setting advanced; the batch writes the head once at its end.
CREATE OR REPLACE FUNCTION xacthuc_next_status_idx(p_platform text, p_key text, p_block integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_counter bigint;
    v_key     text;
    v_block   integer;
    v_next    text := current_setting('xacthuc.sl_next', true);
BEGIN
    IF v_next IS NOT NULL AND v_next <> '' THEN
        v_counter := v_next::bigint;
        PERFORM set_config('xacthuc.sl_next', (v_counter + 1)::text, true);
        RETURN xacthuc_permuted_index(current_setting('xacthuc.sl_key'), v_counter,
                                      current_setting('xacthuc.sl_block')::bigint);
    END IF;
    INSERT INTO status_heads (platform, key, block) VALUES (p_platform, p_key, p_block)
    ON CONFLICT (platform) DO NOTHING;
    UPDATE status_heads SET next = next + 1 WHERE platform = p_platform
    RETURNING next - 1, key, block INTO v_counter, v_key, v_block;
    RETURN xacthuc_permuted_index(v_key, v_counter, v_block);
END
$$;

-- ---- the issuing steps, their records rendered by the caller --------------------------------

-- 0002's issuing steps, with one more reply: `o_new`, true when this run issued the
-- attestation. Its two records (check_ok / id_check ok, then attestation_issued) are then the
-- caller's to append (xacthuc_batch: the op's rendered records); a refusal is audited here as
-- before, and a run returning what an earlier run issued writes nothing.
DROP FUNCTION xacthuc_issue_phone(text, text, text, text, double precision, text, jsonb, integer,
                                  text, integer);
DROP FUNCTION xacthuc_issue_id(text, text, text, text, double precision, text, jsonb, jsonb,
                               integer, text, integer);

CREATE FUNCTION xacthuc_issue_phone(
    p_platform text, p_challenge text, p_account text, p_phone text,
    p_now double precision, p_time_j text, p_pending jsonb, p_max integer,
    p_sl_key text, p_sl_block integer,
    OUT o_reason text, OUT o_a attestations, OUT o_new boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_cur attestations;
BEGIN
    o_new := false;
    PERFORM xacthuc_lock_issue(p_platform, p_challenge);
    SELECT * INTO v_cur FROM attestations WHERE platform = p_platform AND account = p_account;
    IF EXISTS (SELECT 1 FROM status_tokens WHERE platform = p_platform
                                            AND issued_by = p_challenge) THEN
        IF v_cur.issued_by = p_challenge AND v_cur.status = 'active' THEN
            o_reason := '';
            o_a := v_cur;
            RETURN;
        END IF;
        o_reason := 'CHALLENGE_ALREADY_USED';
    ELSIF xacthuc_linked_child(p_platform, p_account, p_now) THEN
        o_reason := 'GUARDIAN_REQUIRED';
    ELSE
        PERFORM xacthuc_lock_subject(p_platform, p_phone);
        IF xacthuc_subject_has_room(p_platform, p_phone, p_account, p_max) THEN
            o_reason := '';
            o_new := true;
            o_a := ROW(p_platform, p_account, p_pending ->> 'method', p_pending ->> 'token_id',
                       p_now, (p_pending ->> 'issued_at')::double precision,
                       (p_pending ->> 'expires_at')::double precision, 'active', false, false,
                       p_pending ->> 'age_band', '', NULL, '',
                       xacthuc_next_status_idx(p_platform, p_sl_key, p_sl_block), NULL, '',
                       p_phone, p_challenge)::attestations;
            PERFORM xacthuc_attest(o_a);
            RETURN;
        END IF;
        o_reason := 'PHONE_ACCOUNT_LIMIT';
    END IF;
    PERFORM xacthuc_audit(p_platform, p_time_j, p_account, 'check_failed', 'refused', o_reason,
                          jsonb_build_object('challenge', p_challenge, 'phone', p_phone));
END
$$;

CREATE FUNCTION xacthuc_issue_id(
    p_platform text, p_attempt text, p_account text, p_subject text,
    p_now double precision, p_time_j text, p_pending jsonb, p_ctx jsonb, p_max integer,
    p_sl_key text, p_sl_block integer,
    OUT o_reason text, OUT o_a attestations, OUT o_new boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_cur attestations;
BEGIN
    o_new := false;
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
                              p_ctx || jsonb_build_object('refunded', 'personal_id'));
        RETURN;
    END IF;
    o_reason := '';
    o_new := true;
    o_a := ROW(p_platform, p_account, p_pending ->> 'method', p_pending ->> 'token_id',
               p_now, (p_pending ->> 'issued_at')::double precision,
               (p_pending ->> 'expires_at')::double precision, 'active', false, true,
               p_pending ->> 'age_band', '', NULL, '',
               xacthuc_next_status_idx(p_platform, p_sl_key, p_sl_block), NULL,
               p_pending ->> 'id_type', p_subject, p_attempt)::attestations;
    PERFORM xacthuc_attest(o_a);
END
$$;

-- ---- the batch ------------------------------------------------------------------------------

-- 0006's xacthuc_batch, with the ops above:
--   {"op": "phone", "by", "account", "subject", "now", "tj", "pending", "max", "key", "block",
--    "h", "t"}                     xacthuc_issue_phone; "h", "t": its two records when it
--                                  issues (check_ok, attestation_issued) around their index
--   {"op": "id", "by", "account", "subject", "now", "tj", "pending", "ctx", "max", "key",
--    "block", "h", "t"}            xacthuc_issue_id; "h", "t": id_check ok, attestation_issued
-- the others as in 0006. When an op may issue, the status head is read once under its lock
-- (counter, key, block kept in transaction-local settings for xacthuc_next_status_idx) and
-- written once, before the log head is taken.
CREATE OR REPLACE FUNCTION xacthuc_batch(p_platform text, p_ops jsonb)
RETURNS TABLE (
    o_i        integer,
    o_reason   text,
    o_a        attestations,
    o_first    bigint,
    o_linked   boolean,
    o_has_room boolean,
    o_active   boolean,
    o_managed  boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_key      bigint;
    v_op       jsonb;
    v_kind     text;
    v_sl_key   text;
    v_sl_block integer;
    v_next     bigint;
    v_head_key text;
    v_head_block integer;
    v_buf      text;
    v_heads    text[] := '{}';
    v_tails    text[] := '{}';
    v_times    text[] := '{}';
    v_events   text[] := '{}';
    v_accounts text[] := '{}';
    v_n        integer;
    v_res      record;
BEGIN
    -- Advisory locks first, in one (sorted) order.
    FOR v_key IN
        SELECT DISTINCT k FROM (
            SELECT hashtextextended(p_platform || chr(30) || (o ->> 'by'), 0) AS k
              FROM jsonb_array_elements(p_ops) AS o WHERE o ->> 'op' IN ('phone', 'id')
            UNION ALL
            SELECT hashtextextended(p_platform || chr(31) || (o ->> 'subject'), 0)
              FROM jsonb_array_elements(p_ops) AS o WHERE o ->> 'op' IN ('phone', 'id')
        ) AS keys ORDER BY k
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;
    -- Then the status head, when an op may issue: its counter kept in memory until the end.
    SELECT o ->> 'key', (o ->> 'block')::integer INTO v_sl_key, v_sl_block
      FROM jsonb_array_elements(p_ops) AS o WHERE o ->> 'op' IN ('phone', 'id') LIMIT 1;
    IF FOUND THEN
        SELECT h.next, h.key, h.block INTO v_next, v_head_key, v_head_block
          FROM status_heads h WHERE h.platform = p_platform FOR NO KEY UPDATE;
        IF NOT FOUND THEN  -- the platform's first token: the op's key and block are fixed
            INSERT INTO status_heads (platform, key, block)
            VALUES (p_platform, v_sl_key, v_sl_block) ON CONFLICT (platform) DO NOTHING;
            SELECT h.next, h.key, h.block INTO v_next, v_head_key, v_head_block
              FROM status_heads h WHERE h.platform = p_platform FOR NO KEY UPDATE;
        END IF;
        v_sl_key := v_head_key;
        v_sl_block := v_head_block;
        PERFORM set_config('xacthuc.sl_next', v_next::text, true),
                set_config('xacthuc.sl_key', v_sl_key, true),
                set_config('xacthuc.sl_block', v_sl_block::text, true);
    END IF;
    -- The ops, by account (their rows' locks in one order), their records kept aside.
    PERFORM set_config('xacthuc.audit_defer', 'on', true);
    FOR o_i, v_op IN
        SELECT (e.n - 1)::integer, e.o FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS e(o, n)
         ORDER BY e.o ->> 'account' COLLATE "C", e.n
    LOOP
        v_kind := v_op ->> 'op';
        o_reason := NULL;
        o_a := NULL;
        o_linked := NULL;
        o_has_room := NULL;
        o_active := NULL;
        o_managed := NULL;
        o_first := NULL;
        v_n := cardinality(v_heads);
        IF v_kind = 'audit' THEN
            IF jsonb_array_length(v_op -> 'h') > 0 THEN
                o_first := v_n;
                v_heads := v_heads || ARRAY(SELECT jsonb_array_elements_text(v_op -> 'h'));
                v_tails := v_tails || ARRAY(SELECT jsonb_array_elements_text(v_op -> 't'));
                v_times := v_times || ARRAY(SELECT jsonb_array_elements_text(v_op -> 'tm'));
                v_events := v_events || ARRAY(SELECT jsonb_array_elements_text(v_op -> 'e'));
                v_accounts := v_accounts
                    || ARRAY(SELECT jsonb_array_elements_text(v_op -> 'ac'));
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF v_kind = 'facts' THEN
            SELECT f.linked, f.has_room, f.active, f.guardian_managed
              INTO o_linked, o_has_room, o_active, o_managed
              FROM xacthuc_facts(p_platform, v_op ->> 'account', v_op ->> 'subject',
                                 (v_op ->> 'now')::double precision,
                                 (v_op ->> 'max')::integer) AS f;
            RETURN NEXT;
            CONTINUE;
        END IF;
        PERFORM set_config('xacthuc.audit_buf', '', true);
        IF v_kind = 'phone' THEN
            SELECT * INTO v_res FROM xacthuc_issue_phone(
                p_platform, v_op ->> 'by', v_op ->> 'account', v_op ->> 'subject',
                (v_op ->> 'now')::double precision, v_op ->> 'tj', v_op -> 'pending',
                (v_op ->> 'max')::integer, v_sl_key, v_sl_block);
        ELSIF v_kind = 'gone' THEN
            SELECT *, false AS o_new INTO v_res FROM xacthuc_phone_gone(
                p_platform, v_op ->> 'by', v_op ->> 'account', v_op ->> 'tj');
        ELSIF v_kind = 'id' THEN
            SELECT * INTO v_res FROM xacthuc_issue_id(
                p_platform, v_op ->> 'by', v_op ->> 'account', v_op ->> 'subject',
                (v_op ->> 'now')::double precision, v_op ->> 'tj', v_op -> 'pending',
                v_op -> 'ctx', (v_op ->> 'max')::integer, v_sl_key, v_sl_block);
        ELSIF v_kind = 'revoke' THEN
            o_a := xacthuc_revoke_account(
                p_platform, v_op ->> 'account', (v_op ->> 'now')::double precision,
                v_op ->> 'tj', v_op ->> 'reason');
        ELSE
            RAISE EXCEPTION 'xacthuc_batch: unknown op %', v_kind;
        END IF;
        IF v_kind IN ('phone', 'gone', 'id') THEN
            o_reason := v_res.o_reason;
            o_a := v_res.o_a;
            IF v_res.o_new THEN  -- issued: its two records, rendered by the caller
                o_first := v_n;
                v_heads := v_heads || ARRAY[v_op -> 'h' ->> 0, v_op -> 'h' ->> 1];
                v_tails := v_tails || ARRAY[v_op -> 't' ->> 0, v_op -> 't' ->> 1];
                v_times := v_times || ARRAY[v_op ->> 'tj', v_op ->> 'tj'];
                v_events := v_events || ARRAY[CASE v_kind WHEN 'phone' THEN 'check_ok'
                                                          ELSE 'id_check' END,
                                              'attestation_issued'];
                v_accounts := v_accounts || ARRAY[v_op ->> 'account', v_op ->> 'account'];
            END IF;
        END IF;
        v_buf := current_setting('xacthuc.audit_buf');
        IF v_buf <> '' THEN
            o_first := v_n;
            SELECT v_heads || array_agg(r ->> 0 ORDER BY n),
                   v_tails || array_agg(r ->> 1 ORDER BY n),
                   v_times || array_agg(r ->> 2 ORDER BY n),
                   v_events || array_agg(r ->> 3 ORDER BY n),
                   v_accounts || array_agg(r ->> 4 ORDER BY n)
              INTO v_heads, v_tails, v_times, v_events, v_accounts
              FROM json_array_elements(('[' || rtrim(v_buf, ',') || ']')::json)
                   WITH ORDINALITY AS b(r, n);
        END IF;
        RETURN NEXT;
    END LOOP;
    PERFORM set_config('xacthuc.audit_defer', 'off', true);
    -- The status head written once (still before the log head), its counter moved on.
    IF v_next IS NOT NULL THEN
        IF current_setting('xacthuc.sl_next')::bigint <> v_next THEN
            UPDATE status_heads SET next = current_setting('xacthuc.sl_next')::bigint
             WHERE platform = p_platform;
        END IF;
        PERFORM set_config('xacthuc.sl_next', '', true);
    END IF;
    -- Last, the log head: every record of the batch in one append.
    o_i := -1;
    o_reason := NULL;
    o_a := NULL;
    o_linked := NULL;
    o_has_room := NULL;
    o_active := NULL;
    o_managed := NULL;
    o_first := NULL;
    IF cardinality(v_heads) > 0 THEN
        o_first := xacthuc_append_audit(p_platform, v_heads, v_tails, v_times, v_events,
                                        v_accounts);
    END IF;
    RETURN NEXT;
END
$$;
