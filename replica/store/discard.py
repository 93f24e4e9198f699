"""A database that a run created and never committed to is not left behind.

A first ``replica sync`` or ``replica run`` against a wrong URL, an unreachable server or a
refused shape creates the file (and its lock file) before any answer arrives. When such a run
ends without a commit, ``discard_if_unused`` removes them again. It only removes a file that
holds nothing anyone committed, and only while holding the single-writer lock: the caller must
also know that its own run created the file (it never removes a file that existed before).
"""

from __future__ import annotations

import contextlib
import os

import apsw

from replica.errors import StoreError
from replica.store.file import LOCK_SUFFIX, StoreLock

__all__ = ["discard_if_unused", "is_unused"]

# The files SQLite and replica keep beside a database (the lock file goes last, while it is held).
_COMPANIONS = ("-wal", "-shm", "-journal")


def discard_if_unused(path: str | os.PathLike[str]) -> bool:
    """Remove the database at ``path`` and its -wal, -shm, -journal and lock files if nothing was
    ever committed to it (``is_unused``). True if removed; False (nothing touched) if it holds
    anything, is missing, cannot be read, or another process holds its writer lock."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    try:
        lock = StoreLock.acquire(path)
    except StoreError:  # another replica writes it now: it is theirs
        return False
    try:
        try:
            conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
            try:
                conn.set_busy_timeout(1000)
                unused = is_unused(conn)
            finally:
                conn.close()
        except apsw.Error:  # unreadable or not a database: not ours to judge, keep it
            return False
        if not unused:
            return False
        try:
            os.unlink(path)
        except OSError:
            return False
        for companion in (*(path + suffix for suffix in _COMPANIONS), path + LOCK_SUFFIX):
            with contextlib.suppress(OSError):  # mostly absent already; a leftover one is harmless
                os.unlink(companion)
        return True
    finally:
        lock.release()


def is_unused(conn: apsw.Connection) -> bool:
    """True if the database holds replica's bookkeeping and nothing a commit wrote: no table or view
    of anyone's, every ``_replica`` table empty but ``_replica_shapes``, and no shape there with a
    position, rows or a last sync (a refused shape's recorded error is not a commit)."""
    with conn:  # one read transaction: what it sees is one state of the file
        unused = _holds_nothing(conn)
    return unused


def _holds_nothing(conn: apsw.Connection) -> bool:
    others = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE name NOT LIKE '\\_replica%' ESCAPE '\\' "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' LIMIT 1"
    ).fetchall()
    if others:
        return False
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
    for table in tables:  # stages, staged rows, groups, transactions, snapshots: each only written by a commit
        if table.startswith("sqlite_") or table == "_replica_shapes":
            continue
        if conn.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchall():
            return False
    return "_replica_shapes" not in tables or not conn.execute(
        'SELECT 1 FROM "_replica_shapes" WHERE "handle" IS NOT NULL OR "offset" IS NOT NULL '
        'OR "last_synced_at" IS NOT NULL OR "rows" <> 0 LIMIT 1'
    ).fetchall()
