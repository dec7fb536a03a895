-- 0003: the platforms' API keys (issue 10; the key store of issue 12, `xacthuc keys
-- create|revoke|list`; service/xacthuc/adapters/store/pg_api_keys.py).
--
-- Only the SHA-256 of a key's secret is kept, never the key. Every change (a create, a
-- revoke) gives the key the next `version`: the change feed every server polls is
-- "the keys whose version is above mine", one range scan of the unique index on `version`,
-- and the store's version is max(version) (keys are never deleted). Writers take the table's
-- SHARE ROW EXCLUSIVE lock (it excludes other writers, not readers) before they number a
-- change, and hold it until they commit: versions are handed out in commit order, so a
-- reader that sees version v sees every change up to v (a sequence could commit 6 before 5,
-- and a server that read 6 would never see 5). Key changes are rare operator actions.
--
-- Unlike the other tables this one does not lead with `platform`: a key is found by its id
-- across platforms (with Citus: a reference table).
CREATE TABLE api_keys (
    -- The checks of domain/api_keys.check_new_key, which every writer applies first.
    key_id        text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{12}$'),
    platform      text NOT NULL CHECK (platform ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    role          text NOT NULL CHECK (role IN ('platform', 'auditor')),
    sha256        bytea NOT NULL CHECK (length(sha256) = 32),
    created_at    double precision NOT NULL,
    label         text NOT NULL DEFAULT '',
    revoked_at    double precision,
    revoke_reason text NOT NULL DEFAULT '',
    version       bigint NOT NULL UNIQUE CHECK (version > 0),
    CHECK ((revoked_at IS NULL) = (revoke_reason = ''))
);
CREATE INDEX api_keys_platform ON api_keys (platform, created_at, key_id);

-- Store a new key and append its `api_key_created` record (account "", the key id and role;
-- never the hash or the label) to the platform's audit log (xacthuc_audit, 0002; p_time_j:
-- the record's time as JSON text), in one statement. Returns the store's new version, NULL
-- when the id is taken (nothing written).
CREATE FUNCTION xacthuc_create_api_key(
    p_key_id     text,
    p_platform   text,
    p_role       text,
    p_sha256     bytea,
    p_created_at double precision,
    p_label      text,
    p_time_j     text
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
BEGIN
    LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM api_keys WHERE key_id = p_key_id) THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(max(version), 0) + 1 INTO v_version FROM api_keys;
    INSERT INTO api_keys (key_id, platform, role, sha256, created_at, label, version)
    VALUES (p_key_id, p_platform, p_role, p_sha256, p_created_at, p_label, v_version);
    PERFORM xacthuc_audit(
        p_platform, p_time_j, '', 'api_key_created', 'ok', '',
        jsonb_build_object('key_id', p_key_id, 'role', p_role)
    );
    RETURN v_version;
END
$$;

-- Revoke a key and append its `api_key_revoked` record (with the reason), in one statement
-- (one round trip: the caller need not read the key's platform and role first). A key revoked
-- already is returned as it is (nothing written, nothing audited). A key not stored: with a
-- fallback (p_platform not NULL: the keys file's entry) it is stored revoked, so the store's
-- word wins over the file; without one, no row. Returns the key as now stored.
CREATE FUNCTION xacthuc_revoke_api_key(
    p_key_id     text,
    p_at         double precision,
    p_reason     text,
    p_time_j     text,
    p_platform   text,
    p_role       text,
    p_sha256     bytea,
    p_created_at double precision,
    p_label      text
) RETURNS SETOF api_keys LANGUAGE plpgsql AS $$
DECLARE
    k         api_keys;
    v_stored  boolean;
    v_version bigint;
BEGIN
    LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO k FROM api_keys WHERE key_id = p_key_id;
    v_stored := FOUND;
    IF v_stored AND k.revoked_at IS NOT NULL THEN
        RETURN NEXT k;
        RETURN;
    END IF;
    IF NOT v_stored AND p_platform IS NULL THEN
        RETURN;
    END IF;
    SELECT coalesce(max(version), 0) + 1 INTO v_version FROM api_keys;
    IF v_stored THEN
        UPDATE api_keys SET revoked_at = p_at, revoke_reason = p_reason, version = v_version
         WHERE key_id = p_key_id RETURNING * INTO k;
    ELSE
        INSERT INTO api_keys
            (key_id, platform, role, sha256, created_at, label, revoked_at, revoke_reason,
             version)
        VALUES (p_key_id, p_platform, p_role, p_sha256, p_created_at, p_label, p_at, p_reason,
                v_version)
        RETURNING * INTO k;
    END IF;
    PERFORM xacthuc_audit(
        k.platform, p_time_j, '', 'api_key_revoked', 'ok', p_reason,
        jsonb_build_object('key_id', k.key_id, 'role', k.role)
    );
    RETURN NEXT k;
END
$$;
