"""The outbox of local writes, ``_replica_outbox``: upload batches, their txids, confirmation, rejection.

The triggers of a writable shape's view (``overlay``) append changes. The uploader takes them in
batches, in order: a batch is named (``batch_id``) in its own transaction before it is first sent,
so a retry, a restart or a kill -9 sends the same changes under the same name, and a batch is never
sent twice under two. A 200 stores the batch's txid; the publish that makes that transaction visible
in a shape removes the batch's changes to that shape (``confirm``, in the publish's transaction: no
flicker). A rejection removes the batch's changes (``reject``); ``overlay.refold`` then shows each
row as the changes left pending make it.

Used only inside the store's transactions and its apsw-error boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import apsw

from replica.protocol.shape import Shape
from replica.protocol.txids import Visibility
from replica.protocol.writes import Batch, LocalChange
from replica.store import overlay, positions, txlog
from replica.typemap.schema import TableSchema

__all__ = [
    "BATCH_LIMIT", "CONFIRM_GRACE", "Backlog", "accepted", "backlogs", "confirm", "failed", "next_batch", "reject",
    "waiting",
]

# Seconds after which an accepted transaction no shape has shown is taken to have changed nothing
# (Electric's replication lag is milliseconds).
CONFIRM_GRACE = 30.0
BATCH_LIMIT = 1000  # changes per upload batch: one POST body stays well under a megabyte of typical rows


@dataclass(frozen=True)
class Backlog:
    """The outbox at a glance: changes not yet confirmed, the oldest one's write time, the last upload error."""

    pending: int = 0
    oldest: float | None = None
    error: str | None = None


def waiting(conn: apsw.Connection) -> bool:
    """True if some change waits to be uploaded (not yet accepted)."""
    row = conn.execute('SELECT EXISTS (SELECT 1 FROM "_replica_outbox" WHERE "txid" IS NULL)').fetchone()
    return bool(row and row[0])


def next_batch(conn: apsw.Connection, new_id: str, limit: int = BATCH_LIMIT) -> Batch | None:
    """The batch to send now: the one named and not yet accepted (a retry), else the next changes in
    order, named ``new_id`` in this transaction; None when nothing waits."""
    row = conn.execute('SELECT "batch_id" FROM "_replica_outbox" WHERE "batch_id" IS NOT NULL AND "txid" IS NULL '
                       'ORDER BY "seq" LIMIT 1').fetchone()
    if row is None:
        conn.execute('UPDATE "_replica_outbox" SET "batch_id" = ? WHERE "seq" IN (SELECT "seq" FROM "_replica_outbox" '
                     'WHERE "batch_id" IS NULL ORDER BY "seq" LIMIT ?)', (new_id, limit))
        if not conn.changes():
            return None
        batch_id = new_id
    else:
        batch_id = str(row[0])
    changes = tuple(
        LocalChange(str(name), str(table), str(op), json.loads(str(key)), json.loads(str(value)))
        for name, table, op, key, value in conn.execute(
            'SELECT "name", "table", "operation", "key", "value" FROM "_replica_outbox" WHERE "batch_id" = ? '
            'ORDER BY "seq"', (batch_id,)))
    return Batch(batch_id, changes)


def accepted(conn: apsw.Connection, batch_id: str, txid: int, now: float, shapes: Mapping[str, Shape]) -> None:
    """Note the txid that applied a batch. A shape may have published that transaction already (the
    sync can be quicker than the upload's answer): its changes to such shapes go now."""
    conn.execute('UPDATE "_replica_outbox" SET "txid" = ?, "accepted_at" = ?, "error" = NULL WHERE "batch_id" = ?',
                 (txid, now, batch_id))
    names = {str(n) for (n,) in conn.execute('SELECT DISTINCT "name" FROM "_replica_outbox" WHERE "batch_id" = ?',
                                             (batch_id,))}
    snapshots = dict(txlog.snapshots(conn))
    for name in sorted(names):
        shown = conn.execute(
            'SELECT 1 FROM "_replica_txids" WHERE "name" = ? AND "published_at" IS NOT NULL AND "txid" IN (?, ?)',
            (name, txid, txid & 0xFFFFFFFF)).fetchone() is not None
        if shown or (name in snapshots and snapshots[name].sees(txid)):
            conn.execute('DELETE FROM "_replica_outbox" WHERE "batch_id" = ? AND "name" = ?', (batch_id, name))
            _refold(conn, name, shapes)


def failed(conn: apsw.Connection, batch_id: str, error: str) -> None:
    conn.execute('UPDATE "_replica_outbox" SET "error" = ? WHERE "batch_id" = ?', (error, batch_id))


def reject(conn: apsw.Connection, batch_id: str, shapes: Mapping[str, Shape]) -> int:
    """Remove a rejected batch's changes and show each row as the changes left pending make it
    (``shapes``: the writable shapes by local name); how many changes went."""
    names = [str(name) for (name,) in conn.execute(
        'DELETE FROM "_replica_outbox" WHERE "batch_id" = ? RETURNING "name"', (batch_id,))]
    for name in sorted(set(names)):
        _refold(conn, name, shapes)
    return len(names)


def _refold(conn: apsw.Connection, name: str, shapes: Mapping[str, Shape]) -> None:
    shape, published = shapes.get(name), positions.load_published(conn, name)
    if shape is not None and published is not None and published.schema is not None:
        overlay.refold(conn, name, TableSchema.from_electric(published.schema, shape.overrides))


def confirm(
    conn: apsw.Connection, name: str, txids: Iterable[int], lsn: int | None, snapshot: Visibility | None, now: float
) -> int:
    """Remove the accepted changes to ``name`` that its publish now shows; how many.

    A batch's transaction is in the published rows when the publish carried its txid; when its
    commit LSN (known from any shape's changes) is at or below the LSN the rows are complete at
    (a change that matched no row of this shape); or when the published snapshot sees it. A txid
    the server gave as a 32-bit xid matches on its low 32 bits. A transaction that changed no row
    at all (an update of a row deleted meanwhile) has no LSN and appears nowhere: its changes go at
    the first publish ``CONFIRM_GRACE`` seconds after it was accepted (design.md §3j).
    """
    waiting = {int(t) for (t,) in conn.execute(
        'SELECT DISTINCT "txid" FROM "_replica_outbox" WHERE "name" = ? AND "txid" IS NOT NULL', (name,))}
    stale = {int(t) for (t,) in conn.execute(
        'SELECT DISTINCT "txid" FROM "_replica_outbox" WHERE "name" = ? AND "txid" IS NOT NULL AND "accepted_at" <= ?',
        (name, now - CONFIRM_GRACE))}
    if not waiting:
        return 0
    shown = set(txids)
    shown |= {t & 0xFFFFFFFF for t in shown}
    if lsn is not None:
        shown |= {int(t) for (t,) in conn.execute(
            'SELECT DISTINCT "txid" FROM "_replica_txids" WHERE "lsn" IS NOT NULL AND "lsn" <= ?', (lsn,))}
        shown |= {t & 0xFFFFFFFF for t in shown}
    done = [t for t in waiting if t in shown or t in stale or (snapshot is not None and snapshot.sees(t))]
    if not done:
        return 0
    conn.execute('DELETE FROM "_replica_outbox" WHERE "name" = ? AND "txid" IN (SELECT value FROM json_each(?))',
                 (name, json.dumps(done)))
    return conn.changes()


def backlogs(conn: apsw.Connection) -> dict[str, Backlog]:
    """The outbox at a glance per local table, in one read (a table with nothing waiting is absent; so is
    every table of a database older than the outbox). Works on a read-only connection."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_replica_outbox'").fetchall():
        return {}
    # The failing batch is the oldest one (batches go in order): its error is the latest failure.
    return {
        str(name): Backlog(int(count), float(oldest), None if error is None else str(error))
        for name, count, oldest, error in conn.execute(
            'SELECT "name", count(*), min("written_at"), (SELECT e."error" FROM "_replica_outbox" AS e '
            'WHERE e."name" = o."name" AND e."error" IS NOT NULL ORDER BY e."seq" LIMIT 1) '
            'FROM "_replica_outbox" AS o GROUP BY "name"'
        )
    }
