"""A burst's changes waiting for up-to-date in ``_replica_staging``: raw as received, in log order.

A burst (changes on top of the published rows that span several responses) is staged here and
applied to the table at publish. Values are checked with the type map on arrival, so a bad one
is reported with its response; they are converted again at publish with the schema of that
moment. Nothing is held in Python memory between calls, and ``read`` streams rows back in
bounded batches (R10). Used only inside the store's transactions and its apsw-error boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import apsw

from replica.protocol.messages import Change
from replica.typemap.schema import TableSchema

__all__ = ["append", "clear", "read"]

_READ_BATCH = 1000


def append(conn: apsw.Connection, name: str, changes: Iterable[Change], table: TableSchema) -> int:
    """Stage ``changes`` after those already staged (ProtocolError names a bad value); how many were added."""
    rows = []
    for change in changes:
        table.convert_row(change.value)
        rows.append((name, change.operation, change.key, json.dumps(change.value, ensure_ascii=False,
                                                                   separators=(",", ":"))))
    if rows:
        # seq is the rowid: each new row gets max(seq) + 1, so log order is insertion order.
        conn.executemany(
            'INSERT INTO "_replica_staging" ("name", "operation", "key", "value") VALUES (?, ?, ?, ?)', rows
        )
    return len(rows)


def read(conn: apsw.Connection, name: str) -> Iterator[tuple[str, str, dict[str, str | None]]]:
    """Staged (operation, key, value) in log order, fetched in batches (no statement stays open)."""
    after = 0
    while True:
        batch = conn.execute(
            'SELECT "seq", "operation", "key", "value" FROM "_replica_staging" '
            'WHERE "name" = ? AND "seq" > ? ORDER BY "seq" LIMIT ?',
            (name, after, _READ_BATCH),
        ).fetchall()
        if not batch:
            return
        for _seq, operation, key, value in batch:
            yield str(operation), str(key), json.loads(str(value))
        after = int(batch[-1][0])  # type: ignore[arg-type]  # seq: an INTEGER PRIMARY KEY


def clear(conn: apsw.Connection, name: str) -> None:
    conn.execute('DELETE FROM "_replica_staging" WHERE "name" = ?', (name,))
