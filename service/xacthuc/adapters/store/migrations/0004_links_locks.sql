-- 0004: guardian links (R1, P6) and account locks (R7) in PostgreSQL (issue 10;
-- docs/design/system-of-record.md). One function per state-changing operation of the Store
-- port, called in one round trip (adapters/store/pg_guardian.py): its checks, its writes and
-- its audit records commit together or not at all, exactly as memory_guardian.py and
-- memory_locks.py behave, record for record, byte for byte (xacthuc_audit, 0002).
--
-- A refusal is audited in the same call, so it is returned as a value (`r_refusal`, the
-- error's reason) after its record is written, never raised (a raised error would roll the
-- record back).
--
-- Concurrency. Every link decision about a child holds the child's advisory lock
-- (xacthuc_lock_link), taken first; link_guardian also holds the guardian pseudonym's (its
-- child cap), after the child's; sweeps are serialised per platform. Then, in one order for
-- every function that takes them (the issuing steps of 0002 too), so that none waits for
-- another in a cycle: advisory locks, the platform's status-index head (status_heads), rows
-- (attestations, links, locks), the platform's log head (log_heads: the first audit record,
-- so every record is written after the rows are locked).

-- Serialise the decisions about one child (`p_kind` 'child'), one guardian pseudonym's cap
-- ('guardian'), one account's lock ('lock') or a platform's sweep ('sweep'): held until
-- commit.
CREATE FUNCTION xacthuc_lock_link(p_platform text, p_kind text, p_name text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(
        hashtextextended(p_platform || chr(29) || p_kind || chr(29) || p_name, 0))
$$;

-- End the active link `p_l` (as read FOR UPDATE): `ended`, `end_reason`; out of the child's
-- active link, the guardian's children and the aging-out index at once (all are ended IS
-- NULL). Its `guardian_link_ended` record is the caller's to write (after its row locks).
CREATE FUNCTION xacthuc_end_link(p_l guardian_links, p_now double precision, p_reason text)
RETURNS void LANGUAGE sql AS $$
    UPDATE guardian_links SET ended = p_now, end_reason = p_reason
     WHERE platform = p_l.platform AND link_id = p_l.link_id
$$;

CREATE FUNCTION xacthuc_audit_link_ended(
    p_l guardian_links, p_time_j text, p_reason text
) RETURNS bigint LANGUAGE sql AS $$
    SELECT xacthuc_audit(p_l.platform, p_time_j, p_l.child, 'guardian_link_ended', 'ok',
                         p_reason, jsonb_build_object('link', p_l.link_id,
                                                      'guardian', p_l.guardian))
$$;

-- link_guardian (Store.link_guardian): register `p_child` under the guardian whose
-- attestation (account `p_guardian_account`) verified the pseudonym `p_guardian` with token
-- `p_guardian_token_id`, or renew the link of the same guardian and child; issue the child's
-- guardian-managed attestation (token `p_token_id`, the guardian's method `p_method`).
-- Refusals (audited `guardian_link_created` refused): GUARDIAN_NOT_VERIFIED,
-- GUARDIAN_UNDER_18, CHILD_NOT_UNDER_16, CHILD_ALREADY_LINKED, GUARDIAN_CHILD_LIMIT.
--
-- Idempotent on the call's link id `p_link_id` (its token is issued by 'link:' || id): run
-- again, it writes nothing and returns the link and the child's attestation as they are
-- now, or LINK_ALREADY_ENDED (not audited) when that link has ended or the child's
-- attestation is no longer the link's.
CREATE FUNCTION xacthuc_link_guardian(
    p_platform          text,
    p_link_id           text,
    p_child             text,
    p_guardian_account  text,
    p_guardian          text,
    p_guardian_token_id text,
    p_guardian_ref      text,
    p_relationship      text,
    p_child_consent     boolean,
    p_aged_out_at       double precision,
    p_now               double precision,
    p_time_j            text,
    p_token_id          text,
    p_issued_at         double precision,
    p_expires_at        double precision,
    p_method            text,
    p_max_children      integer,
    p_status_key        text,
    p_status_block      integer,
    OUT r_refusal       text,
    OUT r_link_id       text,
    OUT r_renewed       boolean,
    OUT r_a             attestations
) LANGUAGE plpgsql AS $$
DECLARE
    v_issued_by text := 'link:' || p_link_id;
    v_g         attestations;
    v_c         attestations;
    v_l         guardian_links;
    v_has_g     boolean;
    v_has_c     boolean;
    v_current   boolean;
    v_idx       bigint;
BEGIN
    r_refusal := '';
    r_renewed := false;
    PERFORM xacthuc_lock_link(p_platform, 'child', p_child);
    PERFORM xacthuc_lock_link(p_platform, 'guardian', p_guardian);

    IF EXISTS (SELECT 1 FROM status_tokens
                WHERE platform = p_platform AND issued_by = v_issued_by) THEN
        -- A retry of a call that took effect: its link (created or renewed by it: the
        -- child's active link of this guardian) and the child's attestation under it.
        SELECT * INTO v_l FROM guardian_links
         WHERE platform = p_platform AND child = p_child AND ended IS NULL
           AND guardian = p_guardian;
        v_current := FOUND;
        SELECT * INTO v_c FROM attestations WHERE platform = p_platform AND account = p_child;
        IF NOT v_current OR NOT FOUND OR v_c.link_id <> v_l.link_id THEN
            r_refusal := 'LINK_ALREADY_ENDED';
            RETURN;
        END IF;
        r_link_id := v_l.link_id;
        r_renewed := v_l.link_id <> p_link_id;
        r_a := v_c;
        RETURN;
    END IF;

    -- The status head before any row (see the order above); the index is drawn only once
    -- the checks pass.
    INSERT INTO status_heads (platform, key, block)
    VALUES (p_platform, p_status_key, p_status_block) ON CONFLICT (platform) DO NOTHING;
    PERFORM 1 FROM status_heads WHERE platform = p_platform FOR UPDATE;
    -- Both attestation rows, in one order (two calls with the roles swapped never deadlock).
    PERFORM 1 FROM attestations
     WHERE platform = p_platform AND account IN (p_guardian_account, p_child)
     ORDER BY account FOR UPDATE;
    SELECT * INTO v_g FROM attestations
     WHERE platform = p_platform AND account = p_guardian_account;
    v_has_g := FOUND;
    SELECT * INTO v_c FROM attestations WHERE platform = p_platform AND account = p_child;
    v_has_c := FOUND;
    SELECT * INTO v_l FROM guardian_links
     WHERE platform = p_platform AND child = p_child AND ended IS NULL FOR UPDATE;
    v_current := FOUND;
    r_renewed := v_current AND v_l.guardian = p_guardian;

    IF NOT v_has_g OR v_g.status <> 'active' OR v_g.expires_at <= p_now
            OR v_g.guardian_managed OR v_g.token_id <> p_guardian_token_id
            OR v_g.subject <> p_guardian THEN
        r_refusal := 'GUARDIAN_NOT_VERIFIED';
    ELSIF v_g.age_band = '16_17' THEN
        r_refusal := 'GUARDIAN_UNDER_18';
    ELSIF v_has_c AND v_c.status = 'active' AND v_c.expires_at > p_now
            AND v_c.age_band IN ('adult', '16_17') THEN
        r_refusal := 'CHILD_NOT_UNDER_16'; -- the registry proved the account holder 16+
    ELSIF v_current AND NOT r_renewed THEN
        r_refusal := 'CHILD_ALREADY_LINKED';
    ELSIF NOT r_renewed AND (SELECT count(*) FROM guardian_links
                              WHERE platform = p_platform AND guardian = p_guardian
                                AND ended IS NULL) >= p_max_children THEN
        r_refusal := 'GUARDIAN_CHILD_LIMIT';
    END IF;
    IF r_refusal <> '' THEN
        r_renewed := false;
        PERFORM xacthuc_audit(
            p_platform, p_time_j, p_child, 'guardian_link_created', 'refused', r_refusal,
            jsonb_build_object('guardian', p_guardian, 'guardian_account', p_guardian_account,
                               'relationship', p_relationship));
        RETURN;
    END IF;

    v_idx := xacthuc_next_status_idx(p_platform, p_status_key, p_status_block);
    IF r_renewed THEN
        r_link_id := v_l.link_id;
        UPDATE guardian_links
           SET relationship = p_relationship, method = p_method,
               child_consent = p_child_consent, renewed = p_now, aged_out_at = p_aged_out_at
         WHERE platform = p_platform AND link_id = r_link_id;
    ELSE
        r_link_id := p_link_id;
        INSERT INTO guardian_links (platform, link_id, child, guardian_account, guardian,
                                    relationship, method, child_consent, created, renewed,
                                    aged_out_at)
        VALUES (p_platform, p_link_id, p_child, p_guardian_account, p_guardian,
                p_relationship, p_method, p_child_consent, p_now, p_now, p_aged_out_at);
    END IF;

    PERFORM xacthuc_audit(
        p_platform, p_time_j, p_child,
        CASE WHEN r_renewed THEN 'guardian_link_renewed' ELSE 'guardian_link_created' END,
        'ok', '',
        jsonb_build_object('guardian', p_guardian, 'guardian_account', p_guardian_account,
                           'relationship', p_relationship, 'link', r_link_id,
                           'method', p_method));
    PERFORM xacthuc_audit(p_platform, p_time_j, p_child, 'consent_recorded', 'ok', '',
                          jsonb_build_object('link', r_link_id, 'party', 'guardian'));
    IF p_child_consent THEN
        PERFORM xacthuc_audit(p_platform, p_time_j, p_child, 'consent_recorded', 'ok', '',
                              jsonb_build_object('link', r_link_id, 'party', 'child'));
    END IF;
    -- At most one live token per child: the one replaced is revoked.
    IF v_has_c AND v_c.status = 'active' AND v_c.expires_at > p_now THEN
        PERFORM xacthuc_revoke(v_c, p_now, p_time_j, 'superseded');
    END IF;

    r_a.platform := p_platform;
    r_a.account := p_child;
    r_a.method := p_method;
    r_a.token_id := p_token_id;
    r_a.verified_at := p_now;
    r_a.issued_at := p_issued_at;
    r_a.expires_at := p_expires_at;
    r_a.status := 'active';
    r_a.guardian_managed := true;
    r_a.commercial_livestream := false;
    r_a.age_band := 'under_16';
    r_a.guardian_ref := p_guardian_ref;
    r_a.aged_out_at := p_aged_out_at;
    r_a.link_id := r_link_id;
    r_a.status_idx := v_idx;
    r_a.revoked_at := NULL;
    r_a.id_type := '';
    r_a.subject := ''; -- a guardian-managed child takes no P8 slot of the guardian's
    r_a.issued_by := v_issued_by;
    PERFORM xacthuc_attest(r_a);
    PERFORM xacthuc_audit(
        p_platform, p_time_j, p_child, 'attestation_issued', 'ok', '',
        jsonb_build_object('token_id', p_token_id, 'method', p_method,
                           'expires', trunc(p_expires_at)::bigint, 'guardian_managed', 1,
                           'age_band', 'under_16'));
END
$$;

-- end_guardian_link (Store.end_guardian_link): end the active link `p_link_id` and revoke
-- the child's attestation issued under it at once (reason 'guardian_link_' || p_reason),
-- when it is still active. Refusals, audited `guardian_link_ended` refused: LINK_NOT_FOUND
-- (account ""), LINK_ALREADY_ENDED (the child's account; so a retry of an end that took
-- effect answers it too). `r_a`: the revoked attestation, NULL when nothing was revoked.
CREATE FUNCTION xacthuc_end_guardian_link(
    p_platform  text,
    p_link_id   text,
    p_now       double precision,
    p_time_j    text,
    p_reason    text,
    OUT r_refusal text,
    OUT r_a       attestations
) LANGUAGE plpgsql AS $$
DECLARE
    v_child text;
    v_l     guardian_links;
    v_c     attestations;
    v_has_c boolean;
BEGIN
    r_refusal := '';
    SELECT child INTO v_child FROM guardian_links
     WHERE platform = p_platform AND link_id = p_link_id;
    IF FOUND THEN
        PERFORM xacthuc_lock_link(p_platform, 'child', v_child);
    END IF;
    SELECT * INTO v_l FROM guardian_links
     WHERE platform = p_platform AND link_id = p_link_id FOR UPDATE;
    IF NOT FOUND OR v_l.ended IS NOT NULL THEN
        r_refusal := CASE WHEN v_l.link_id IS NULL THEN 'LINK_NOT_FOUND'
                          ELSE 'LINK_ALREADY_ENDED' END;
        PERFORM xacthuc_audit(p_platform, p_time_j, coalesce(v_l.child, ''),
                              'guardian_link_ended', 'refused', r_refusal,
                              jsonb_build_object('link', p_link_id));
        RETURN;
    END IF;
    SELECT * INTO v_c FROM attestations
     WHERE platform = p_platform AND account = v_l.child FOR UPDATE;
    v_has_c := FOUND;
    PERFORM xacthuc_end_link(v_l, p_now, p_reason);
    PERFORM xacthuc_audit_link_ended(v_l, p_time_j, p_reason);
    IF v_has_c AND v_c.link_id = v_l.link_id AND v_c.status = 'active' THEN
        r_a := xacthuc_revoke(v_c, p_now, p_time_j, 'guardian_link_' || p_reason);
    END IF;
END
$$;

-- sweep_aged_out (Store.sweep_aged_out): end up to `p_limit` active links whose child
-- turned 16 at or before `p_now`, oldest birthday first, ties by the child's account id
-- bytes; the attestation issued under each, when still active, gets status 'aged_out' (its
-- token expired at the birthday: no status bit). Returns how many links it ended. The links'
-- records are written after every row is locked, in the order the links ended.
CREATE FUNCTION xacthuc_sweep_aged_out(
    p_platform text, p_now double precision, p_time_j text, p_limit integer
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_next  guardian_links;
    v_l     guardian_links;
    v_ended guardian_links[] := '{}';
BEGIN
    IF p_limit <= 0 THEN
        RETURN 0;
    END IF;
    PERFORM xacthuc_lock_link(p_platform, 'sweep', '');
    WHILE cardinality(v_ended) < p_limit LOOP
        SELECT * INTO v_next FROM guardian_links
         WHERE platform = p_platform AND ended IS NULL AND aged_out_at <= p_now
         ORDER BY aged_out_at, child LIMIT 1;
        EXIT WHEN NOT FOUND;
        PERFORM xacthuc_lock_link(p_platform, 'child', v_next.child);
        -- Decided again under the child's lock: a link call or a withdrawal may have
        -- committed in between (then the next round looks again; none can change it now).
        SELECT * INTO v_l FROM guardian_links
         WHERE platform = p_platform AND link_id = v_next.link_id AND ended IS NULL
           AND aged_out_at <= p_now
           FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        PERFORM xacthuc_end_link(v_l, p_now, 'aged_out');
        UPDATE attestations SET status = 'aged_out'
         WHERE platform = p_platform AND account = v_l.child AND link_id = v_l.link_id
           AND status = 'active';
        IF FOUND THEN
            PERFORM xacthuc_invalidate(p_platform, v_l.child);
        END IF;
        v_ended := v_ended || v_l;
    END LOOP;
    FOREACH v_l IN ARRAY v_ended LOOP
        PERFORM xacthuc_audit_link_ended(v_l, p_time_j, 'aged_out');
    END LOOP;
    RETURN cardinality(v_ended);
END
$$;

-- lock_account (Store.lock_account): the lock replaces the account's latest one and counts
-- a temporary lock; audited `account_locked`. A lock that holds at `p_now` with the same
-- kind, end, reason and reference is returned unchanged, `r_changed` false and no record
-- (a retry). `p_until` NULL: permanent.
CREATE FUNCTION xacthuc_lock_account(
    p_platform  text,
    p_account   text,
    p_kind      text,
    p_until     double precision,
    p_reason    text,
    p_reference text,
    p_now       double precision,
    p_time_j    text,
    OUT r_changed boolean,
    OUT r_lock    account_locks
) LANGUAGE plpgsql AS $$
DECLARE
    v_prev account_locks;
BEGIN
    PERFORM xacthuc_lock_link(p_platform, 'lock', p_account);
    SELECT * INTO v_prev FROM account_locks
     WHERE platform = p_platform AND account = p_account;
    IF FOUND AND v_prev.ended_at IS NULL
            AND (v_prev.lock_until IS NULL OR p_now < v_prev.lock_until)
            AND v_prev.kind = p_kind AND v_prev.lock_until IS NOT DISTINCT FROM p_until
            AND v_prev.reason = p_reason AND v_prev.request_reference = p_reference THEN
        r_changed := false;
        r_lock := v_prev;
        RETURN;
    END IF;
    INSERT INTO account_locks AS l (platform, account, kind, locked_at, lock_until, reason,
                                    request_reference, temporary_locks)
    VALUES (p_platform, p_account, p_kind, p_now, p_until, p_reason, p_reference,
            CASE WHEN p_kind = 'temporary' THEN 1 ELSE 0 END)
    ON CONFLICT (platform, account) DO UPDATE SET
        kind = excluded.kind, locked_at = excluded.locked_at,
        lock_until = excluded.lock_until, reason = excluded.reason,
        request_reference = excluded.request_reference,
        temporary_locks = l.temporary_locks + excluded.temporary_locks,
        ended_at = NULL, unlock_reason = ''
    RETURNING * INTO r_lock;
    r_changed := true;
    PERFORM xacthuc_invalidate(p_platform, p_account);
    PERFORM xacthuc_audit(
        p_platform, p_time_j, p_account, 'account_locked', 'ok', p_reason,
        jsonb_build_object('kind', p_kind,
                           'lock_until', CASE WHEN p_until IS NULL THEN '""'::jsonb
                                              ELSE to_jsonb(trunc(p_until)::bigint) END,
                           'request', p_reference));
END
$$;

-- unlock_account (Store.unlock_account): lift the account's lock that holds at `p_now`,
-- audited `account_unlocked` with its kind; NULL (nothing changed, nothing audited) when no
-- lock holds.
CREATE FUNCTION xacthuc_unlock_account(
    p_platform text, p_account text, p_now double precision, p_time_j text, p_reason text
) RETURNS account_locks LANGUAGE plpgsql AS $$
DECLARE
    v_lock account_locks;
BEGIN
    PERFORM xacthuc_lock_link(p_platform, 'lock', p_account);
    UPDATE account_locks SET ended_at = p_now, unlock_reason = p_reason
     WHERE platform = p_platform AND account = p_account AND ended_at IS NULL
       AND (lock_until IS NULL OR p_now < lock_until)
    RETURNING * INTO v_lock;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM xacthuc_invalidate(p_platform, p_account);
    PERFORM xacthuc_audit(p_platform, p_time_j, p_account, 'account_unlocked', 'ok', p_reason,
                          jsonb_build_object('kind', v_lock.kind));
    RETURN v_lock;
END
$$;
