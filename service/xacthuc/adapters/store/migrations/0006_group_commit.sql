-- 0006: group commit of the durable steps (issue 10; adapters/store/pg_batch.py,
-- docs/design/system-of-record.md "Group commit"). Concurrent calls of one process and one
-- platform send their PostgreSQL steps together: one call of xacthuc_batch, one round trip,
-- one transaction, one commit (one fsync) for the batch, instead of one each.
--
-- Within a batch the audit records are not appended as each step writes them: xacthuc_audit
-- keeps them aside (transaction-local settings, below) and the batch appends all of them at
-- its end, in one xacthuc_append_audit call. So the platform's log head (log_heads) is taken
-- last and held for the shortest time, after every other lock of the batch, in the order of
-- 0004's note: advisory locks (sorted), the status head, rows (by account), the log head.

-- Append one audit record as 0002's xacthuc_audit does and return its index; inside
-- xacthuc_batch (the transaction-local setting xacthuc.audit_defer = 'on') keep it in
-- xacthuc.audit_buf instead, for the batch to append at its end, and return NULL (no caller inside a batch
-- reads the index). The buffer is JSON text: one array [head, tail, time, event, account]
-- per record, each followed by a comma.
CREATE OR REPLACE FUNCTION xacthuc_audit(
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
    IF current_setting('xacthuc.audit_defer', true) = 'on' THEN
        PERFORM set_config('xacthuc.audit_buf',
                           current_setting('xacthuc.audit_buf', true)
                           || json_build_array(v_r.o_head, v_r.o_tail, p_time_j, p_event,
                                               p_account)::text || ',',
                           true);
        RETURN NULL;
    END IF;
    RETURN xacthuc_append_audit(p_platform, ARRAY[v_r.o_head], ARRAY[v_r.o_tail],
                                ARRAY[p_time_j], ARRAY[p_event], ARRAY[p_account]);
END
$$;

-- The durable steps of concurrent calls of one platform (`p_ops`, a JSON array; pg_batch.py
-- builds it), in one transaction. Each op is an object with "op" and its arguments:
--   {"op": "phone", "by", "account", "subject", "now", "tj", "pending", "max", "key", "block"}
--       xacthuc_issue_phone (`by`: the challenge id, `subject`: the phone pseudonym)
--   {"op": "gone", "by", "account", "tj"}                     xacthuc_phone_gone
--   {"op": "id", "by", "account", "subject", "now", "tj", "pending", "ctx", "max", "key",
--    "block"}                                                  xacthuc_issue_id
--   {"op": "revoke", "account", "now", "tj", "reason"}        xacthuc_revoke_account
--   {"op": "facts", "account", "subject", "now", "max"}       xacthuc_facts (a read)
--   {"op": "audit", "h", "t", "tm", "e", "ac"}  records rendered by the caller (the Redis
--       steps' outbox): the arguments of xacthuc_append_audit
-- One row per op (`o_i`: its position in `p_ops`, from 0): the step's reply (o_reason, o_a;
-- the facts), and `o_first`, the offset of its first record among the batch's records (NULL
-- when it wrote none); then one row with o_i = -1 whose `o_first` is the index of the batch's
-- first record (NULL: none), so a record's index is that plus its offset.
--
-- Refusals are replies, never errors (each step audits and returns them): one call refused
-- does not fail the others. A step that raises fails the batch, which writes nothing; the
-- caller then runs each op alone (pg_batch.py), so only that op fails.
--
-- Locks, in 0004's order, so that no batch waits for another transaction in a cycle: the
-- advisory locks of every issuing op (its issue key, its subject's P8 key: the ones
-- xacthuc_lock_issue and xacthuc_lock_subject take, same keys), sorted; the platform's status
-- head when an op may issue; the ops in account order (their row locks); the log head, by the
-- one append at the end.
CREATE FUNCTION xacthuc_batch(p_platform text, p_ops jsonb)
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
    v_issuing  boolean := false;
    v_sl_key   text;
    v_sl_block integer;
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
    -- Then the status head, when an op may issue (the row the issuing steps update).
    SELECT o ->> 'key', (o ->> 'block')::integer INTO v_sl_key, v_sl_block
      FROM jsonb_array_elements(p_ops) AS o WHERE o ->> 'op' IN ('phone', 'id') LIMIT 1;
    IF FOUND THEN
        PERFORM 1 FROM status_heads WHERE platform = p_platform FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            INSERT INTO status_heads (platform, key, block)
            VALUES (p_platform, v_sl_key, v_sl_block) ON CONFLICT (platform) DO NOTHING;
            PERFORM 1 FROM status_heads WHERE platform = p_platform FOR NO KEY UPDATE;
        END IF;
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
        PERFORM set_config('xacthuc.audit_buf', '', true);
        IF v_kind = 'phone' THEN
            SELECT * INTO v_res FROM xacthuc_issue_phone(
                p_platform, v_op ->> 'by', v_op ->> 'account', v_op ->> 'subject',
                (v_op ->> 'now')::double precision, v_op ->> 'tj', v_op -> 'pending',
                (v_op ->> 'max')::integer, v_op ->> 'key', (v_op ->> 'block')::integer);
        ELSIF v_kind = 'gone' THEN
            SELECT * INTO v_res FROM xacthuc_phone_gone(
                p_platform, v_op ->> 'by', v_op ->> 'account', v_op ->> 'tj');
        ELSIF v_kind = 'id' THEN
            SELECT * INTO v_res FROM xacthuc_issue_id(
                p_platform, v_op ->> 'by', v_op ->> 'account', v_op ->> 'subject',
                (v_op ->> 'now')::double precision, v_op ->> 'tj', v_op -> 'pending',
                v_op -> 'ctx', (v_op ->> 'max')::integer, v_op ->> 'key',
                (v_op ->> 'block')::integer);
        ELSIF v_kind = 'revoke' THEN
            o_a := xacthuc_revoke_account(
                p_platform, v_op ->> 'account', (v_op ->> 'now')::double precision,
                v_op ->> 'tj', v_op ->> 'reason');
        ELSIF v_kind = 'facts' THEN
            SELECT f.linked, f.has_room, f.active, f.guardian_managed
              INTO o_linked, o_has_room, o_active, o_managed
              FROM xacthuc_facts(p_platform, v_op ->> 'account', v_op ->> 'subject',
                                 (v_op ->> 'now')::double precision,
                                 (v_op ->> 'max')::integer) AS f;
        ELSE
            RAISE EXCEPTION 'xacthuc_batch: unknown op %', v_kind;
        END IF;
        IF v_kind IN ('phone', 'gone', 'id') THEN
            o_reason := v_res.o_reason;
            o_a := v_res.o_a;
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
