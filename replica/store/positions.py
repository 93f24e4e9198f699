"""replica's bookkeeping: where each shape stands (its published position and status) and the
stage of a snapshot or burst that has not reached up-to-date yet.

``STATE_SQL`` is the DDL (``schemas/state.sql`` byte for byte). Rows that wait for up-to-date
live in one of two places, chosen by what publishing will do with them:

* a snapshot (a first sync, a 409 refetch, a new definition) replaces every row, so it is staged
  in ``_replica_new_<name>``, a table of the final layout, and changes apply to it in place
  (``replica.store.snapshots``);
* a burst extends the published rows, so its changes wait in log order in ``_replica_staging``
  and are applied on top of the table at publish (``replica.store.changelog``).

Used only inside the store's transactions and its apsw-error boundary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import apsw

from replica.protocol import wire
from replica.protocol.shapelog import Commit
from replica.protocol.txids import Visibility
from replica.status import ShapeStatus, parse_time
from replica.typemap.schema import quote_ident

__all__ = [
    "STATE_SQL",
    "Pending",
    "Published",
    "Stage",
    "add_missing_columns",
    "drop_legacy_stages",
    "dump_schema",
    "is_redelivery",
    "load_published",
    "load_schema",
    "load_stage",
    "save_stage",
    "statuses",
]

# Must equal schemas/state.sql byte for byte (tests/unit/test_store.py checks).
STATE_SQL = """-- replica's own bookkeeping tables (design.md §8). Every name starts with _replica.
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
"""

# Columns added since a table was first released: an older database gets them at open.
_ADDED_COLUMNS = {
    "_replica_stages": (
        '"snapshot_lsn" INTEGER', '"xmin" TEXT', '"xmax" TEXT', '"xip_list" TEXT', '"txids_from" INTEGER'
    ),
    "_replica_staging": ('"lsn" INTEGER', '"headers" TEXT'),
}


@dataclass(frozen=True)
class Pending:
    """What a consistency group's member has staged: a snapshot (``refetch``; its up-to-date came at
    ``snapshot_lsn``, or not yet if None; ``witness``: ``txlog.first_after`` it) and/or ``changes``
    waiting in the change log, the earliest at LSN ``lowest`` (0 for one without an LSN)."""

    refetch: bool
    snapshot_lsn: int | None
    changes: int
    lowest: int | None = None
    witness: int | None = None


@dataclass(frozen=True)
class Stage:
    """A staging position: where the unfinished snapshot or burst stands, and what it will do.

    ``snapshot_lsn``: a consistency group's snapshot that reached up-to-date, complete at this LSN;
    ``snapshot``: what that snapshot saw (its snapshot-end); ``txids_from``: a refetch's witnesses
    (``txlog.first_after``) are the transactions recorded after this ``_replica_txids`` rowid.
    """

    definition: str
    handle: str | None
    offset: str
    cursor: str | None
    schema: Mapping[str, Any] | None
    refetch: bool
    changes: int = 0
    snapshot_lsn: int | None = None
    snapshot: Visibility | None = None
    txids_from: int | None = None


@dataclass(frozen=True)
class Published:
    """The published position of a local table (a row of ``_replica_shapes``)."""

    definition: str | None
    handle: str | None
    offset: str | None
    cursor: str | None
    schema: Mapping[str, Any] | None
    rows: int

    def position(self) -> tuple[str | None, str | None, str | None]:
        return self.definition, self.handle, self.offset

    def continued_by(self, definition: str, handle: str | None) -> bool:
        """True if changes for (definition, handle) extend these rows rather than replace them."""
        return (
            self.offset is not None
            and self.definition == definition
            and (self.handle is None or handle is None or self.handle == handle)
        )


def statuses(conn: apsw.Connection, name: str | None = None) -> list[ShapeStatus]:
    """Every shape's stored status (or just ``name``'s), sorted by name. Works on a read-only connection."""
    query = (
        'SELECT s."name", s."state", s."handle", s."offset", s."rows", s."last_synced_at", s."error", '
        'coalesce(g."changes", 0) FROM "_replica_shapes" AS s LEFT JOIN "_replica_stages" AS g ON g."name" = s."name"'
    )
    args: tuple[str, ...] = ()
    if name is not None:
        query += ' WHERE s."name" = ?'
        args = (name,)
    return [
        ShapeStatus(str(row[0]), str(row[1]), row[2], row[3], int(row[4]), parse_time(row[5]), row[6], int(row[7]))
        for row in conn.execute(query + ' ORDER BY s."name"', args)
    ]


def load_published(conn: apsw.Connection, name: str) -> Published | None:
    row = conn.execute(
        'SELECT "definition", "handle", "offset", "cursor", "schema", "rows" FROM "_replica_shapes" WHERE "name" = ?',
        (name,),
    ).fetchone()
    if row is None:
        return None
    definition, handle, offset, cursor, schema, rows = row
    return Published(definition, handle, offset, cursor, load_schema(schema), int(rows))


def dump_schema(schema: Mapping[str, Any] | None) -> str | None:
    # Key order is kept: it is the table's column order.
    return None if schema is None else json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def load_schema(text: str | None) -> Mapping[str, Any] | None:
    return None if text is None else json.loads(text)


def load_stage(conn: apsw.Connection, name: str) -> Stage | None:
    row = conn.execute(
        'SELECT "definition", "handle", "offset", "cursor", "schema", "refetch", "changes", "snapshot_lsn", '
        '"xmin", "xmax", "xip_list", "txids_from" FROM "_replica_stages" WHERE "name" = ?',
        (name,),
    ).fetchone()
    if row is None:
        return None
    definition, handle, offset, cursor, schema, refetch, changes, snapshot_lsn, xmin, xmax, xip, txids_from = row
    snapshot = None
    if xmin is not None:
        snapshot = Visibility(int(xmin), int(xmax), frozenset(int(x) for x in json.loads(xip)))
    return Stage(definition, handle, offset, cursor, load_schema(schema), bool(refetch), int(changes),
                 None if snapshot_lsn is None else int(snapshot_lsn), snapshot, txids_from)


def save_stage(conn: apsw.Connection, name: str, stage: Stage) -> None:
    seen = stage.snapshot.to_json() if stage.snapshot is not None else None
    conn.execute(
        'INSERT OR REPLACE INTO "_replica_stages" ("name", "definition", "handle", "offset", "cursor", "schema", '
        '"refetch", "changes", "snapshot_lsn", "xmin", "xmax", "xip_list", "txids_from") '
        'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        (
            name,
            stage.definition,
            stage.handle,
            stage.offset,
            stage.cursor,
            dump_schema(stage.schema),
            int(stage.refetch),
            stage.changes,
            stage.snapshot_lsn,
            seen["xmin"] if seen else None,
            seen["xmax"] if seen else None,
            json.dumps(seen["xip_list"]) if seen else None,
            stage.txids_from,
        ),
    )


def add_missing_columns(conn: apsw.Connection) -> None:
    """Give a database an older replica made the columns added since (every one nullable)."""
    for table, columns in _ADDED_COLUMNS.items():
        have = {str(row[1]) for row in conn.execute(f'PRAGMA main.table_info("{table}")')}
        for column in columns:
            if column.split('"')[1] not in have:
                conn.execute(f'ALTER TABLE main."{table}" ADD COLUMN {column}')


def drop_legacy_stages(conn: apsw.Connection) -> list[str]:
    """Forget stages an older replica kept in ``_replica_rows_<name>`` (typed staging, since replaced):
    those shapes resume from their published position, or fetch their snapshot again."""
    tables = [str(r[0]) for r in conn.execute(
        "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name LIKE '\\_replica\\_rows\\_%' ESCAPE '\\'"
    )]
    names = [table.removeprefix("_replica_rows_") for table in tables]
    for table, name in zip(tables, names, strict=True):
        conn.execute(f"DROP TABLE main.{quote_ident(table)}")
        conn.execute('DELETE FROM "_replica_stages" WHERE "name" = ?', (name,))
        conn.execute('DELETE FROM "_replica_staging" WHERE "name" = ?', (name,))
    return names


def is_redelivery(
    commit: Commit, stage: Stage | None, published: tuple[str | None, str | None, str | None] | None
) -> bool:
    """True if ``commit`` repeats a position already stored for the same definition and handle (R3).

    ``published`` is (definition, handle, offset) of the published position, if any. Positions
    within one handle are immutable, so an older commit carries nothing new.
    """
    if commit.refetch:
        return False
    if stage is not None:
        position: tuple[str | None, str | None, str | None] = (stage.definition, stage.handle, stage.offset)
    elif published is not None and published[2] is not None:
        position = published
    else:
        return False
    definition, handle, offset = position
    if definition != commit.shape.definition() or handle is None or handle != commit.checkpoint.handle:
        return False
    try:
        new, old = wire.Offset.parse(commit.checkpoint.offset), wire.Offset.parse(offset or "")
    except ValueError:
        return False
    # Two staging steps never share an offset (the server advances, or the protocol refuses), so
    # an equal one is a redelivery; an equal publish may carry a new cursor and is applied again.
    return new < old or (new == old and stage is not None and not commit.up_to_date)
