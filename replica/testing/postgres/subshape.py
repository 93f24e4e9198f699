"""A subquery shape's snapshot and transactions on the Postgres dev server (``subquery.py``
judges its conditions; ``fake/subquery.py``'s ``Moves`` decides its messages, as in the fake).

* **Snapshot**: the tables the shape reads get REPLICA IDENTITY FULL (as the root table does),
  then one REPEATABLE READ transaction reads the snapshot's visibility and full copies of all of
  them; the shape's rows are the root copy's rows in the shape, with their tags.
* **Transactions** the snapshot lacks: each change of a table the shape reads updates its copy;
  then the fake's ``subquery_transaction`` writes the root table's changes, the moves and the
  moved-in rows, read from the copies as the transaction left them. A TRUNCATE of any of the
  tables, or a change that does not fit a copy's columns, expires the shape (clients get 409).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replica.protocol import wire
from replica.testing.fake.database import subquery_transaction
from replica.testing.fake.subquery import Moves
from replica.testing.postgres.catalog import PgConn, PgTable, Snapshot, ensure_full_identity
from replica.testing.postgres.decode import Transaction, fit_rows
from replica.testing.postgres.subquery import Subqueries, read_copies

if TYPE_CHECKING:
    from replica.testing.postgres.server import PgShapeLog

__all__ = ["snapshot", "transaction"]


def snapshot(log: PgShapeLog, table: PgTable, conn: PgConn) -> tuple[Snapshot, list[list[bytes]]]:
    """Set up ``log``'s subqueries and moves; its snapshot's visibility and chunks."""
    assert log.definition.where is not None
    subqueries = Subqueries(conn, table, log.definition.where, log.definition.params)
    for read in subqueries.tables.values():
        ensure_full_identity(conn, read)
    visible, copies = read_copies(conn, subqueries)
    subqueries.load(copies)
    subqueries.prime()
    log.subqueries = subqueries
    log.moves = Moves(subqueries.split, log.handle)
    rows = [row for row in subqueries.root_rows() if log.moves.in_shape(row)]
    if log.definition.log != wire.LOG_FULL:
        rows = []
    chunks = log.chunk_snapshot(table, rows, xmin=visible.xmin, xmax=visible.xmax, xip=sorted(visible.xip))
    return visible, chunks


def transaction(log: PgShapeLog, tx: Transaction) -> bool | None:
    """Append ``tx``'s part to ``log``: True if anything was appended, None if the shape must expire."""
    subqueries = log.subqueries
    assert subqueries is not None
    changes = []
    for change in tx.changes:
        hit = [relation for relation in change.relations if relation in subqueries.tables]
        if not hit or change.operation == "skipped":
            continue
        if change.operation == "truncate":
            return None
        table = subqueries.tables[hit[0]]
        rows = fit_rows(change, table.columns)
        if rows is None:
            return None
        subqueries.apply(hit[0], *rows)
        changes.append((table, *rows))
    if not changes:
        return False
    subqueries.prime()
    before = len(log.entries)
    subquery_transaction(log, changes, tx.xid, tx.lsn, subqueries.root_rows())
    return len(log.entries) > before
