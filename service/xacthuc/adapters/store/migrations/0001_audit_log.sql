-- 0001: the audit log and its checkpoints (docs/design/system-of-record.md).
-- Every table leads with `platform`: with Citus each is distributed by platform and co-located.

-- The per-platform counter row: the next leaf index (`size`) and the latest record's time
-- (its JSON text, RFC 3339 UTC with milliseconds: compared as text in the C collation, as
-- Redis's audit_time did). A transaction appending n records takes indices
-- size .. size + n - 1 by locking this row first; the lock, held until commit, makes the
-- indices gap-free and unique (a rollback gives them back, unlike a sequence).
CREATE TABLE log_heads (
    platform  text PRIMARY KEY,
    size      bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
    last_time text COLLATE "C" NOT NULL DEFAULT ''
);

-- The records, exactly as rendered (`body`, with their index inside), and their RFC 6962 leaf
-- hash. Erasure (P10) sets `body` to NULL and `erased_at`; the leaf hash stays.
CREATE TABLE audit_records (
    platform    text NOT NULL,
    idx         bigint NOT NULL CHECK (idx >= 0),
    recorded_at timestamptz NOT NULL,
    event       text NOT NULL,
    account     text NOT NULL DEFAULT '',
    body        text,
    leaf_hash   bytea NOT NULL CHECK (length(leaf_hash) = 32),
    erased_at   timestamptz,
    PRIMARY KEY (platform, idx),
    CHECK ((body IS NULL) = (erased_at IS NOT NULL))
);
CREATE INDEX audit_records_account ON audit_records (platform, account, idx);
CREATE INDEX audit_records_event ON audit_records (platform, event, recorded_at);
CREATE INDEX audit_records_time ON audit_records (platform, recorded_at);

-- Append records in one statement (one round trip, its own transaction or the caller's).
-- Record i is rendered by the caller around its index: heads[i] || <index> || tails[i], its
-- time (the JSON text times[i], inside tails[i]) moved up to the previous record's when
-- earlier, so times never go backwards. The leaf hash is RFC 6962's: SHA-256(0x00 || record).
-- Returns the index of the first record.
CREATE FUNCTION xacthuc_append_audit(
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
    v_time  text COLLATE "C";
    v_body  text;
    v_n     integer := coalesce(array_length(p_heads, 1), 0);
BEGIN
    INSERT INTO log_heads (platform) VALUES (p_platform) ON CONFLICT (platform) DO NOTHING;
    SELECT size, last_time INTO v_first, v_last
      FROM log_heads WHERE platform = p_platform FOR UPDATE;
    FOR i IN 1 .. v_n LOOP
        v_time := p_times[i];
        IF v_last > v_time THEN
            v_time := v_last;
        END IF;
        v_body := p_heads[i] || (v_first + i - 1)::text
            || replace(p_tails[i], '"time":' || p_times[i], '"time":' || v_time);
        INSERT INTO audit_records (platform, idx, recorded_at, event, account, body, leaf_hash)
        VALUES (p_platform, v_first + i - 1, btrim(v_time, '"')::timestamptz, p_events[i],
                p_accounts[i], v_body, sha256('\x00'::bytea || convert_to(v_body, 'UTF8')));
        v_last := v_time;
    END LOOP;
    UPDATE log_heads SET size = v_first + v_n, last_time = v_last WHERE platform = p_platform;
    RETURN v_first;
END
$$;

-- Hashes of the complete subtrees of each platform's tree, level >= 1 (level 0, the leaf
-- hashes, are in audit_records): node (level, idx) is MTH(D[idx * 2^level, (idx+1) * 2^level)).
-- `merkle_heads.size` is how many leaves they cover; one extender at a time (row lock).
-- Any proof or root is O(log n) of these, read in one query.
CREATE TABLE merkle_heads (
    platform text PRIMARY KEY,
    size     bigint NOT NULL DEFAULT 0 CHECK (size >= 0)
);
CREATE TABLE merkle_nodes (
    platform text NOT NULL,
    level    smallint NOT NULL CHECK (level >= 1),
    idx      bigint NOT NULL CHECK (idx >= 0),
    hash     bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (platform, level, idx)
);

-- Signed checkpoints. `checkpoint_heads.size` is the compare-and-set cell: a checkpoint is
-- stored only by the transaction that moves it from the size the signer built on.
CREATE TABLE checkpoint_heads (
    platform text PRIMARY KEY,
    size     bigint NOT NULL DEFAULT 0 CHECK (size >= 0)
);
CREATE TABLE checkpoints (
    platform  text NOT NULL,
    size      bigint NOT NULL CHECK (size > 0),
    root      bytea NOT NULL CHECK (length(root) = 32),
    signed_at double precision NOT NULL,
    note      text NOT NULL,
    PRIMARY KEY (platform, size)
);
