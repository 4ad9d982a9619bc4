-- Schema of the reference backend's PostgreSQL store (`syncd backend --postgres`).
-- Applied at every start by every node, under an advisory lock, so it must stay
-- idempotent: CREATE ... IF NOT EXISTS and INSERT ... ON CONFLICT DO NOTHING only.
-- Values are JSON text exactly as the redb store keeps them.

CREATE TABLE IF NOT EXISTS syncd_meta (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);

-- The current record of each (collection, id); `record` is a ServerRecord.
CREATE TABLE IF NOT EXISTS syncd_records (
    collection text NOT NULL,
    id         text NOT NULL,
    record     text NOT NULL,
    PRIMARY KEY (collection, id)
);

-- Every applied op_id with the record its first application produced.
CREATE TABLE IF NOT EXISTS syncd_applied_ops (
    op_id      text PRIMARY KEY,
    record     text NOT NULL,
    applied_at bigint NOT NULL
);

-- The change log: seq 1, 2, ... without gaps, in commit order; `change` is a Change.
CREATE TABLE IF NOT EXISTS syncd_changes (
    seq    bigint PRIMARY KEY,
    change text NOT NULL
);

-- The feed head of schema 1 and 2: one row, locked by every apply. Schema 3
-- no longer writes it nor syncd_changes (revision 2's log is the 'default'
-- scope's feed); both tables stay for the upgrade.
CREATE TABLE IF NOT EXISTS syncd_feed_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq bigint NOT NULL
);

INSERT INTO syncd_feed_head (one, seq) VALUES (true, 0) ON CONFLICT DO NOTHING;

-- Scopes (schema 2, protocol revision 3). Every record, and the record each
-- applied op_id remembers, is in one scope; a schema 1 database's rows get
-- 'default' (the scope of a single-tenant server).
ALTER TABLE syncd_records ADD COLUMN IF NOT EXISTS scope text NOT NULL DEFAULT 'default';
ALTER TABLE syncd_applied_ops ADD COLUMN IF NOT EXISTS scope text NOT NULL DEFAULT 'default';

-- Each scope's feed: seq 1, 2, ... per scope without gaps; `change` is a
-- ScopedChange (a record entry without its scope, which the reader adds, or
-- a gone entry). The seqs are reserved from syncd_scope_heads, whose row
-- stays locked until the commit, so they are gap-free and in commit order
-- (src/backend/server/pg_apply.rs).
CREATE TABLE IF NOT EXISTS syncd_scope_changes (
    scope  text NOT NULL,
    seq    bigint NOT NULL,
    change text NOT NULL,
    PRIMARY KEY (scope, seq)
);

-- The newest seq of each scope's feed.
CREATE TABLE IF NOT EXISTS syncd_scope_heads (
    scope text PRIMARY KEY,
    seq   bigint NOT NULL
);

-- Attachment content (feature `blobs`, src/backend/server/pg_blobs.rs).
-- Uploads in progress, per scope, one row per chunk at its byte position.
CREATE TABLE IF NOT EXISTS syncd_blob_parts (
    scope      text NOT NULL,
    sha256     text NOT NULL,
    pos        bigint NOT NULL,
    data       bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, sha256, pos)
);

-- Complete content, checked against its hash, stored once.
CREATE TABLE IF NOT EXISTS syncd_blobs (
    sha256     text PRIMARY KEY,
    length     bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS syncd_blob_chunks (
    sha256 text NOT NULL,
    pos    bigint NOT NULL,
    data   bytea NOT NULL,
    PRIMARY KEY (sha256, pos)
);

-- The scopes each content was uploaded into: readable there only.
CREATE TABLE IF NOT EXISTS syncd_blob_grants (
    scope  text NOT NULL,
    sha256 text NOT NULL,
    PRIMARY KEY (scope, sha256)
);
