"""Which Postgres transactions readers can see: ``_replica_txids`` and ``_replica_snapshots``.

A change's txids are written when the change is staged (``published_at`` NULL) and marked published
in the transaction that makes the change visible; a snapshot's visibility (its snapshot-end) is
recorded when the snapshot is published. So a wait for an app's own write can be answered from the
database alone, also after a restart. Published rows are kept ``KEEP_SECONDS``, at most ``KEEP_ROWS``.
Used only inside the store's transactions and its apsw-error boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import apsw

from replica.protocol.messages import Change, Move
from replica.protocol.txids import Visibility, change_lsn, change_txids

__all__ = [
    "KEEP_ROWS", "KEEP_SECONDS", "discard", "first_after", "last_rowid", "publish", "recent", "record_snapshot",
    "snapshots", "stage",
]

KEEP_SECONDS = 600.0
KEEP_ROWS = 10_000


def stage(conn: apsw.Connection, name: str, changes: Iterable[Change | Move]) -> None:
    """Note the txids of ``changes`` (and of a subquery shape's moves), which wait in a stage (or are
    about to be published)."""
    rows = [(txid, change_lsn(change), name) for change in changes for txid in change_txids(change)]
    if rows:
        conn.executemany('INSERT INTO "_replica_txids" ("txid", "lsn", "name") VALUES (?, ?, ?)', rows)


def publish(conn: apsw.Connection, name: str, now: float, upto: int | None = None) -> list[int]:
    """Mark the staged txids of ``name`` (``upto``: at or below that LSN) visible; returns them."""
    where, args = ('AND ("lsn" IS NULL OR "lsn" <= ?)', (upto,)) if upto is not None else ("", ())
    published = [int(row[0]) for row in conn.execute(
        f'UPDATE "_replica_txids" SET "published_at" = ? WHERE "name" = ? AND "published_at" IS NULL {where} '
        'RETURNING "txid"', (now, name, *args))]
    if published:
        conn.execute('DELETE FROM "_replica_txids" WHERE "published_at" < ?', (now - KEEP_SECONDS,))
        conn.execute(
            'DELETE FROM "_replica_txids" WHERE "published_at" IS NOT NULL AND rowid <= (SELECT rowid '
            'FROM "_replica_txids" WHERE "published_at" IS NOT NULL ORDER BY rowid DESC LIMIT 1 OFFSET ?)',
            (KEEP_ROWS,),
        )
    return published


def first_after(conn: apsw.Connection, seen: Visibility | None, since: int | None = None) -> int | None:
    """The lowest commit LSN of a recorded transaction (of any shape, staged or published) that began
    after the snapshot ``seen`` was taken (xid ≥ its ``xmax``); None if none is known yet. Only rows
    recorded after rowid ``since`` count: one recorded before the refetch began cannot have begun
    after its snapshot, unless it is from another history (the database was reset: its xids restarted).

    Such a transaction got its xid after the snapshot, so it committed after every transaction the
    snapshot sees: the snapshot is the state at some LSN below this one (design.md §3c). A 32-bit
    txid is compared as ``widen_xid`` does; one exactly half the xid space away counts as before.
    """
    if seen is None:  # a server without snapshot-end: nothing can vouch for the snapshot
        return None
    low = seen.xmax & 0xFFFFFFFF
    for (lsn,) in conn.execute(
        'SELECT min("lsn") FROM "_replica_txids" WHERE rowid > ? AND "lsn" IS NOT NULL AND CASE WHEN '
        '"txid" >= 4294967296 THEN "txid" >= ? ELSE ("txid" - ? + 4294967296) % 4294967296 < 2147483648 END',
        (since or 0, seen.xmax, low),
    ):
        return None if lsn is None else int(lsn)
    return None


def last_rowid(conn: apsw.Connection) -> int:
    """Where ``_replica_txids`` ends now (``first_after``'s ``since``)."""
    row = conn.execute('SELECT coalesce(max(rowid), 0) FROM "_replica_txids"').fetchone()
    return int(row[0]) if row is not None else 0


def discard(conn: apsw.Connection, name: str) -> None:
    """Forget the txids of a stage that will never be published (a refetch replaced it)."""
    conn.execute('DELETE FROM "_replica_txids" WHERE "name" = ? AND "published_at" IS NULL', (name,))


def record_snapshot(conn: apsw.Connection, name: str, seen: Visibility, now: float) -> None:
    values = seen.to_json()
    conn.execute(
        'INSERT OR REPLACE INTO "_replica_snapshots" ("name", "xmin", "xmax", "xip_list", "published_at") '
        "VALUES (?, ?, ?, ?, ?)",
        (name, values["xmin"], values["xmax"], json.dumps(values["xip_list"]), now),
    )


def recent(conn: apsw.Connection) -> list[tuple[int, int | None, str, float]]:
    """(txid, lsn, shape, published_at) of every published transaction kept, oldest first."""
    return [(int(t), None if lsn is None else int(lsn), str(name), float(at))
            for t, lsn, name, at in conn.execute(
                'SELECT "txid", "lsn", "name", "published_at" FROM "_replica_txids" '
                'WHERE "published_at" IS NOT NULL ORDER BY rowid')]


def snapshots(conn: apsw.Connection) -> list[tuple[str, Visibility]]:
    """What each shape's published snapshot saw."""
    return [(str(name), Visibility(int(xmin), int(xmax), frozenset(int(x) for x in json.loads(str(xip)))))
            for name, xmin, xmax, xip in conn.execute(
                'SELECT "name", "xmin", "xmax", "xip_list" FROM "_replica_snapshots" ORDER BY "name"')]
