-- replica's own bookkeeping tables (design.md §8). Every name starts with _replica.
-- replica.store.positions.STATE_SQL is this text; tests/unit/test_store.py checks both the text
-- and the tables a new Store creates.

-- One row per local table: the published position, written in the same transaction as the rows
-- (R1), and the status. definition/schema describe the rows now visible; handle/offset NULL
-- means there is no position to resume from (never published, or reset): the next publish
-- replaces every row.
CREATE TABLE IF NOT EXISTS "_replica_shapes" (
    "name" TEXT NOT NULL PRIMARY KEY COLLATE NOCASE,
    "definition" TEXT,
    "handle" TEXT,
    "offset" TEXT,
    "cursor" TEXT,
    "schema" TEXT,
    "state" TEXT NOT NULL DEFAULT 'stopped',
    "last_synced_at" TEXT,
    "rows" INTEGER NOT NULL DEFAULT 0,
    "error" TEXT
);

-- A snapshot or burst still arriving: the position to resume from (a crash resumes mid-snapshot),
-- and whether publishing it replaces every row of the table (refetch). Its rows wait in one place:
--   refetch = 1: a snapshot, in "_replica_new_<name>", a table created with the synced table's
--                own DDL (columns, types, primary key) and changed in place as the snapshot
--                arrives; at publish it is renamed into place (a new table) or copied over the
--                old rows (an existing table, whose indexes and triggers stay), then dropped;
--   refetch = 0: changes on top of the published rows, in "_replica_staging" below.
CREATE TABLE IF NOT EXISTS "_replica_stages" (
    "name" TEXT NOT NULL PRIMARY KEY COLLATE NOCASE,
    "definition" TEXT NOT NULL,
    "handle" TEXT,
    "offset" TEXT NOT NULL,
    "cursor" TEXT,
    "schema" TEXT,
    "refetch" INTEGER NOT NULL,
    "changes" INTEGER NOT NULL DEFAULT 0
);

-- The staged changes of a burst in log order (seq), raw as received; applied at publish (R2, R10).
CREATE TABLE IF NOT EXISTS "_replica_staging" (
    "seq" INTEGER PRIMARY KEY,
    "name" TEXT NOT NULL COLLATE NOCASE,
    "operation" TEXT NOT NULL,
    "key" TEXT NOT NULL,
    "value" TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS "_replica_staging_name" ON "_replica_staging" ("name", "seq");
