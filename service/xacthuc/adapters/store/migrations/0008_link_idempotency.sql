-- 0008: LinkGuardian's idempotency key (verification.proto, LinkGuardianRequest field 8).
-- With a key the call's link id is derived from (platform, key) (guardian_flow.py), so a retry
-- reaches xacthuc_link_guardian under the id of the call that took effect; the call also
-- carries the keyed digest of its fields (`p_request_digest`, "lr_" + 32 hex: no date of
-- birth in clear), kept with the token the call issued. A retry with the same digest is
-- answered as before (0004: the link and the child's attestation, nothing written); one with
-- another digest is refused IDEMPOTENCY_KEY_REUSED, audited as a refused link in the same
-- bytes as memory_guardian.py writes. Without a key the digest is '' and the id random.
--
-- The column is added with a constant default (no table rewrite); tokens issued before this
-- migration, and by calls without a key, keep ''. The function is replaced with one more
-- parameter, defaulted to '', so a process still running the previous release (19
-- arguments) calls the new function unchanged while the release rolls out.

ALTER TABLE status_tokens ADD COLUMN request_digest text NOT NULL DEFAULT '';

DROP FUNCTION xacthuc_link_guardian(
    text, text, text, text, text, text, text, text, boolean, double precision,
    double precision, text, text, double precision, double precision, text, integer, text,
    integer);

-- As 0004, and: a call recorded under `p_link_id` (its token, issued by 'link:' || id) with
-- another request digest than `p_request_digest` is IDEMPOTENCY_KEY_REUSED (audited
-- `guardian_link_created` refused); a call that takes effect records its digest.
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
    p_request_digest    text DEFAULT '',
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
    v_digest    text;
BEGIN
    r_refusal := '';
    r_renewed := false;
    PERFORM xacthuc_lock_link(p_platform, 'child', p_child);
    PERFORM xacthuc_lock_link(p_platform, 'guardian', p_guardian);

    SELECT request_digest INTO v_digest FROM status_tokens
     WHERE platform = p_platform AND issued_by = v_issued_by;
    IF FOUND THEN
        IF v_digest <> p_request_digest THEN
            -- The call's idempotency key with other fields: refused, audited (no row lock is
            -- needed: nothing but the record is written, and the log head comes last).
            r_refusal := 'IDEMPOTENCY_KEY_REUSED';
            PERFORM xacthuc_audit(
                p_platform, p_time_j, p_child, 'guardian_link_created', 'refused', r_refusal,
                jsonb_build_object('guardian', p_guardian,
                                   'guardian_account', p_guardian_account,
                                   'relationship', p_relationship));
            RETURN;
        END IF;
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
    IF p_request_digest <> '' THEN
        UPDATE status_tokens SET request_digest = p_request_digest
         WHERE platform = p_platform AND issued_by = v_issued_by;
    END IF;
    PERFORM xacthuc_audit(
        p_platform, p_time_j, p_child, 'attestation_issued', 'ok', '',
        jsonb_build_object('token_id', p_token_id, 'method', p_method,
                           'expires', trunc(p_expires_at)::bigint, 'guardian_managed', 1,
                           'age_band', 'under_16'));
END
$$;
