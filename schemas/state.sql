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
-- A shape of a consistency group stages even what reached up-to-date, until the group publishes
-- every member at one LSN: snapshot_lsn is then the LSN its snapshot is complete at (the changes
-- after it wait in "_replica_staging"), and xmin/xmax/xip_list what the snapshot saw. txids_from: the
-- last "_replica_txids" rowid before a refetch began (a transaction that vouches for its snapshot is
-- recorded after it; rows from an earlier history, e.g. a database reset, are not).
CREATE TABLE IF NOT EXISTS "_replica_stages" (
    "name" TEXT NOT NULL PRIMARY KEY COLLATE NOCASE,
    "definition" TEXT NOT NULL,
    "handle" TEXT,
    "offset" TEXT NOT NULL,
    "cursor" TEXT,
    "schema" TEXT,
    "refetch" INTEGER NOT NULL,
    "changes" INTEGER NOT NULL DEFAULT 0,
    "snapshot_lsn" INTEGER,
    "xmin" TEXT,
    "xmax" TEXT,
    "xip_list" TEXT,
    "txids_from" INTEGER
);

-- The staged changes of a burst in log order (seq), raw as received, with their transaction's
-- commit LSN (NULL: not from the replication stream); applied at publish (R2, R10). headers: a
-- subquery shape's tags (JSON), or a move event's patterns (operation move-in/move-out).
CREATE TABLE IF NOT EXISTS "_replica_staging" (
    "seq" INTEGER PRIMARY KEY,
    "name" TEXT NOT NULL COLLATE NOCASE,
    "operation" TEXT NOT NULL,
    "key" TEXT NOT NULL,
    "value" TEXT NOT NULL,
    "lsn" INTEGER,
    "headers" TEXT
);
CREATE INDEX IF NOT EXISTS "_replica_staging_name" ON "_replica_staging" ("name", "seq");

-- Each consistency group: the LSN every member's visible rows are at (R11).
CREATE TABLE IF NOT EXISTS "_replica_groups" (
    "name" TEXT NOT NULL PRIMARY KEY,
    "lsn" INTEGER NOT NULL,
    "published_at" REAL NOT NULL
);

-- Transactions in the synced changes, one row per (txid, shape), for waits on an app's own write
-- (Replica.txid_synced, GET /txid/…): published_at is NULL while the change waits in a stage.
-- Published rows are kept for 10 minutes, at most the newest 10,000.
CREATE TABLE IF NOT EXISTS "_replica_txids" (
    "txid" INTEGER NOT NULL,
    "lsn" INTEGER,
    "name" TEXT NOT NULL COLLATE NOCASE,
    "published_at" REAL
);
CREATE INDEX IF NOT EXISTS "_replica_txids_txid" ON "_replica_txids" ("txid");

-- What each shape's published snapshot saw: a write that committed before it is in its rows
-- without ever appearing in a change (xid8 values, as in snapshot-end).
CREATE TABLE IF NOT EXISTS "_replica_snapshots" (
    "name" TEXT NOT NULL PRIMARY KEY COLLATE NOCASE,
    "xmin" TEXT NOT NULL,
    "xmax" TEXT NOT NULL,
    "xip_list" TEXT NOT NULL,
    "published_at" REAL NOT NULL
);

-- A writable shape's local changes (design.md §3j), one row per change in commit order (seq), written
-- by the INSTEAD OF triggers on its view in the app's own transaction: the local table name, the
-- Postgres table, insert/update/delete, the key and value as JSON. batch_id is given when the change
-- is first put in an upload batch (kept across retries and restarts), txid and accepted_at when the
-- server accepted it; the row goes in the transaction that publishes its txid, or when the server
-- rejects its batch. error: the batch's last failed upload.
CREATE TABLE IF NOT EXISTS "_replica_outbox" (
    "seq" INTEGER PRIMARY KEY,
    "name" TEXT NOT NULL COLLATE NOCASE,
    "table" TEXT NOT NULL,
    "operation" TEXT NOT NULL,
    "key" TEXT NOT NULL,
    "value" TEXT NOT NULL,
    "written_at" REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
    "batch_id" TEXT,
    "txid" INTEGER,
    "accepted_at" REAL,
    "error" TEXT
);
CREATE INDEX IF NOT EXISTS "_replica_outbox_name" ON "_replica_outbox" ("name", "seq");
