-- 0005: audit_records partitioned by month of recorded_at (retention, P10), erasure by account
-- (Law 91/2025), the retention watermark. docs/design/system-of-record.md, README "Where data
-- lives".
--
-- The table is rebuilt: the 0001 table is renamed, a partitioned one takes its name, every row
-- is copied, the old one dropped (all in the migration's one transaction). The primary key
-- must hold the partition key, so it becomes (platform, idx, recorded_at); (platform, idx)
-- stays unique because every index is handed out once, under the lock of the platform's
-- log_heads row (xacthuc_append_audit). With Citus, the table is distributed by platform as
-- it is (the distribution column leads every key).

ALTER TABLE audit_records RENAME TO audit_records_0001;
ALTER TABLE audit_records_0001 RENAME CONSTRAINT audit_records_pkey TO audit_records_0001_pkey;
ALTER TABLE audit_records_0001 RENAME CONSTRAINT audit_records_check TO audit_records_0001_check;
ALTER TABLE audit_records_0001
    RENAME CONSTRAINT audit_records_idx_check TO audit_records_0001_idx_check;
ALTER TABLE audit_records_0001
    RENAME CONSTRAINT audit_records_leaf_hash_check TO audit_records_0001_leaf_hash_check;
ALTER INDEX audit_records_account RENAME TO audit_records_0001_account;
ALTER INDEX audit_records_event RENAME TO audit_records_0001_event;
ALTER INDEX audit_records_time RENAME TO audit_records_0001_time;

-- As in 0001, range-partitioned by month (UTC). Erasure (P10: retention, an account's erasure
-- request) sets `body` to NULL, `account` to '' and `erased_at`; the leaf hash, the index, the
-- time and the event stay, so the tree and every checkpoint still verify. Rows are never
-- deleted and partitions never dropped: an export shows an erased record by its leaf hash.
CREATE TABLE audit_records (
    platform    text NOT NULL,
    idx         bigint NOT NULL CHECK (idx >= 0),
    recorded_at timestamptz NOT NULL,
    event       text NOT NULL,
    account     text NOT NULL DEFAULT '',
    body        text,
    leaf_hash   bytea NOT NULL CHECK (length(leaf_hash) = 32),
    erased_at   timestamptz,
    PRIMARY KEY (platform, idx, recorded_at),
    CHECK ((body IS NULL) = (erased_at IS NOT NULL))
) PARTITION BY RANGE (recorded_at);
-- Rows of a month without a partition land here, so no append can fail for want of one;
-- xacthuc_ensure_audit_partitions moves them into their month's partition.
CREATE TABLE audit_records_default PARTITION OF audit_records DEFAULT;
CREATE INDEX audit_records_account ON audit_records (platform, account, idx);
CREATE INDEX audit_records_event ON audit_records (platform, event, recorded_at);
CREATE INDEX audit_records_time ON audit_records (platform, recorded_at);
-- Records that name an account outside their `account` field, found by an erasure request:
-- a guardian link names the guardian's account, an auditor's query the account it asked
-- about. Partial: only those events pay for the index (PostgresAuditLog.erase_account uses
-- exactly these expressions and predicates).
CREATE INDEX audit_records_guardian_account ON audit_records
    (platform, ((body::jsonb) ->> 'guardian_account'))
    WHERE event IN ('guardian_link_created', 'guardian_link_renewed');
CREATE INDEX audit_records_query_account ON audit_records
    (platform, ((body::jsonb) ->> 'query_account'))
    WHERE event = 'auditor_query_audit_records';

-- Create the partition of the month (UTC) holding `p_time` unless it exists, moving the rows
-- of that month out of the default partition: returns whether it created one. The partition
-- is made apart and attached (SHARE UPDATE EXCLUSIVE on audit_records, so appends and reads
-- of the other partitions go on; ACCESS EXCLUSIVE on the default partition, empty in steady
-- state, until commit).
CREATE FUNCTION xacthuc_audit_partition(p_time timestamptz) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_month timestamp := date_trunc('month', p_time AT TIME ZONE 'UTC');
    v_name  text := 'audit_records_' || to_char(v_month, 'YYYY_MM');
    v_lo    timestamptz := v_month AT TIME ZONE 'UTC';
    v_hi    timestamptz := (v_month + interval '1 month') AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(v_name) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- The lock ATTACH takes anyway, taken first: no row of the month can reach the default
    -- partition between the move and the attach.
    LOCK TABLE audit_records_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format(
        'CREATE TABLE %I (LIKE audit_records INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM audit_records_default'
        ' WHERE recorded_at >= $1 AND recorded_at < $2 RETURNING *)'
        ' INSERT INTO %I SELECT * FROM moved', v_name) USING v_lo, v_hi;
    EXECUTE format('ALTER TABLE audit_records ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   v_name, v_lo, v_hi);
    RETURN true;
END
$$;

-- The partitions of the month of `p_now` and the `p_ahead` months after it, and of every
-- month that has rows in the default partition (which it leaves empty). One caller at a time
-- (an advisory lock: `xacthuc db migrate` and the retention job of every machine call it).
-- Returns how many partitions it created.
CREATE FUNCTION xacthuc_ensure_audit_partitions(p_now timestamptz, p_ahead integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_month timestamptz;
    v_made  integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(8674323708912165634);  -- 0x7861637468756302
    FOR v_month IN
        SELECT (date_trunc('month', p_now AT TIME ZONE 'UTC') + make_interval(months => m))
               AT TIME ZONE 'UTC'
          FROM generate_series(0, p_ahead) AS m
        UNION
        SELECT DISTINCT date_trunc('month', recorded_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
          FROM audit_records_default
    LOOP
        IF xacthuc_audit_partition(v_month) THEN
            v_made := v_made + 1;
        END IF;
    END LOOP;
    RETURN v_made;
END
$$;

-- The months of the existing records first, so that the copy goes straight to them.
SELECT xacthuc_audit_partition(m)
  FROM (SELECT DISTINCT date_trunc('month', recorded_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
          FROM audit_records_0001) AS months(m);
INSERT INTO audit_records (platform, idx, recorded_at, event, account, body, leaf_hash, erased_at)
SELECT platform, idx, recorded_at, event, account, body, leaf_hash, erased_at
  FROM audit_records_0001;
DROP TABLE audit_records_0001;
SELECT xacthuc_ensure_audit_partitions(now(), 3);

-- Retention's watermark (PostgresAuditLog.erase_before): every record of the platform before
-- this time has been erased, so a later pass starts there instead of walking erased rows.
ALTER TABLE log_heads ADD COLUMN expired_before timestamptz NOT NULL DEFAULT '-infinity';
