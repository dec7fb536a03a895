-- 0001: the audit log, its Merkle tiles and its checkpoints (docs/design/system-of-record.md).
-- Every table leads with `platform`: with Citus each is distributed by platform and co-located.

-- The per-platform counter row: the next leaf index (`size`) and the latest record time.
-- A transaction appending n records takes indices size .. size + n - 1 by updating this row
-- first; the row lock, held until commit, makes the indices gap-free and unique.
CREATE TABLE log_heads (
    platform  text PRIMARY KEY,
    size      bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
    last_time double precision NOT NULL DEFAULT 0
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

-- Hashes of complete subtrees, in Tessera's layout: tile (level, idx) holds up to 256 node
-- hashes of height 8 * level, concatenated (32 bytes each).
CREATE TABLE merkle_tiles (
    platform text NOT NULL,
    level    smallint NOT NULL CHECK (level >= 0),
    idx      bigint NOT NULL CHECK (idx >= 0),
    hashes   bytea NOT NULL,
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
