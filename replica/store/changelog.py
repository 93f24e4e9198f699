"""Changes waiting for their publish in ``_replica_staging``: raw as received, in log order.

A burst (changes on top of the published rows that span several responses), and every change of a
consistency group's member until the group publishes it, is staged here with its transaction's
commit LSN and txids, and applied to the table at publish — all of it, or (a group) what is at or
below the group's LSN. Values are checked with the type map on arrival, so a bad one is reported
with its response; they are converted again at publish with the schema of that moment. Nothing is
held in Python memory between calls, and ``read`` streams rows back in bounded batches (R10).
Used only inside the store's transactions and its apsw-error boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import apsw

from replica.protocol.messages import Change
from replica.protocol.txids import change_lsn
from replica.typemap.schema import TableSchema

__all__ = ["append", "clear", "count", "lowest", "read"]

_READ_BATCH = 1000


def append(conn: apsw.Connection, name: str, changes: Iterable[Change], table: TableSchema) -> int:
    """Stage ``changes`` after those already staged (ProtocolError names a bad value); how many were added."""
    rows = []
    for change in changes:
        table.convert_row(change.value)
        rows.append((name, change.operation, change.key,
                     json.dumps(change.value, ensure_ascii=False, separators=(",", ":")), change_lsn(change)))
    if rows:
        # seq is the rowid: each new row gets max(seq) + 1, so log order is insertion order.
        conn.executemany(
            'INSERT INTO "_replica_staging" ("name", "operation", "key", "value", "lsn") VALUES (?, ?, ?, ?, ?)', rows
        )
    return len(rows)


def _upto(upto: int | None) -> tuple[str, tuple[int, ...]]:
    # A change without an LSN (not from the replication stream) goes with the next publish.
    return ('AND ("lsn" IS NULL OR "lsn" <= ?)', (upto,)) if upto is not None else ("", ())


def read(
    conn: apsw.Connection, name: str, upto: int | None = None
) -> Iterator[tuple[str, str, dict[str, str | None]]]:
    """Staged (operation, key, value) in log order (``upto``: only those at or below that LSN), in batches."""
    after = 0
    where, args = _upto(upto)
    while True:
        batch = conn.execute(
            f'SELECT "seq", "operation", "key", "value" FROM "_replica_staging" WHERE "name" = ? AND "seq" > ? {where} '
            'ORDER BY "seq" LIMIT ?',
            (name, after, *args, _READ_BATCH),
        ).fetchall()
        if not batch:
            return
        for _seq, operation, key, value in batch:
            yield str(operation), str(key), json.loads(str(value))
        after = int(batch[-1][0])  # type: ignore[arg-type]  # seq: an INTEGER PRIMARY KEY


def lowest(conn: apsw.Connection, name: str) -> int | None:
    """The smallest LSN staged for ``name`` (0 for a change without one); None if nothing is staged."""
    row = conn.execute('SELECT min(coalesce("lsn", 0)), count(*) FROM "_replica_staging" WHERE "name" = ?',
                       (name,)).fetchone()
    return None if row is None or not row[1] else int(row[0])


def count(conn: apsw.Connection, name: str) -> int:
    return int(conn.execute('SELECT count(*) FROM "_replica_staging" WHERE "name" = ?', (name,)).fetchone()[0])  # type: ignore[index]


def clear(conn: apsw.Connection, name: str, upto: int | None = None) -> None:
    """Forget the staged changes (``upto``: those at or below that LSN)."""
    where, args = _upto(upto)
    conn.execute(f'DELETE FROM "_replica_staging" WHERE "name" = ? {where}', (name, *args))
