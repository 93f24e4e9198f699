"""Changes waiting for their publish in ``_replica_staging``: raw as received, in log order.

A burst (changes on top of the published rows that span several responses), and every change of a
consistency group's member until the group publishes it, is staged here with its transaction's
commit LSN and txids, and applied to the table at publish — all of it, or (a group) what is at or
below the group's LSN. A subquery shape's changes keep their tags, and its move events wait in
their place in the log too (``headers``: JSON, NULL for a plain shape's change). Values are
checked with the type map on arrival, so a bad one is reported with its response; they are
converted again at publish with the schema of that moment. Nothing is held in Python memory
between calls, and ``read`` streams rows back in bounded batches (R10).
Used only inside the store's transactions and its apsw-error boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import apsw

from replica.protocol.messages import MOVE_EVENTS, Change, Move, header_list
from replica.protocol.txids import change_lsn
from replica.typemap.schema import TableSchema

__all__ = ["append", "clear", "count", "lowest", "read"]

_READ_BATCH = 1000


_TAG_HEADERS = ("tags", "removed_tags", "active_conditions", "is_move_in")


def append(conn: apsw.Connection, name: str, changes: Iterable[Change | Move], table: TableSchema) -> int:
    """Stage ``changes`` after those already staged (ProtocolError names a bad value); how many were added."""
    rows: list[tuple[str, str, str, str, int | None, str | None]] = []
    for change in changes:
        if isinstance(change, Move):
            patterns = [{"pos": pos, "value": value} for pos, value in change.patterns]
            rows.append((name, change.event, "", "{}", None, _dump({"patterns": patterns})))
            continue
        table.convert_row(change.value)
        headers = change.headers
        tagged = None
        if "tags" in headers or "removed_tags" in headers or "active_conditions" in headers:  # a subquery shape
            tagged = {h: headers[h] if h == "is_move_in" else header_list(headers, h) for h in _TAG_HEADERS
                      if h in headers}
        rows.append((name, change.operation, change.key, _dump(change.value), change_lsn(change),
                     _dump(tagged) if tagged else None))
    if rows:
        # seq is the rowid: each new row gets max(seq) + 1, so log order is insertion order.
        conn.executemany(
            'INSERT INTO "_replica_staging" ("name", "operation", "key", "value", "lsn", "headers") '
            "VALUES (?, ?, ?, ?, ?, ?)", rows
        )
    return len(rows)


def _dump(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _upto(upto: int | None) -> tuple[str, tuple[int, ...]]:
    # A change without an LSN (not from the replication stream) goes with the next publish.
    return ('AND ("lsn" IS NULL OR "lsn" <= ?)', (upto,)) if upto is not None else ("", ())


def read(conn: apsw.Connection, name: str, upto: int | None = None) -> Iterator[Change | Move]:
    """Staged changes and moves in log order (``upto``: only those at or below that LSN), in batches."""
    after = 0
    where, args = _upto(upto)
    while True:
        batch = conn.execute(
            f'SELECT "seq", "operation", "key", "value", "headers" FROM "_replica_staging" '
            f'WHERE "name" = ? AND "seq" > ? {where} ORDER BY "seq" LIMIT ?',
            (name, after, *args, _READ_BATCH),
        ).fetchall()
        if not batch:
            return
        for _seq, operation, key, value, headers in batch:
            extra = {} if headers is None else json.loads(str(headers))
            if operation in MOVE_EVENTS:
                patterns = tuple((int(p["pos"]), str(p["value"])) for p in extra["patterns"])
                yield Move(str(operation), patterns, extra)
            else:
                yield Change(str(operation), str(key), json.loads(str(value)), extra)
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
