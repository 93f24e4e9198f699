"""store.wal: WAL checkpoints run on their own thread, never inside the writer's commits."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import apsw

from replica.store.store import Store
from replica.store.wal import Checkpoints

ROWS = 5000  # ~5 MB of rows: ~1,260 pages, over SQLite's own threshold (1,000) too


class Gated(Checkpoints):
    """Checkpoints that wait for ``go`` and say when one is done."""

    def __init__(self, path: str, pages: int) -> None:
        self.go, self.done = threading.Event(), threading.Event()
        super().__init__(path, pages)

    def _checkpoint(self) -> None:
        assert self.go.wait(10)
        super()._checkpoint()
        self.done.set()


def fill(conn: apsw.Connection, table: str = "t") -> None:
    with conn:
        conn.execute(f"CREATE TABLE {table} (x)")
        conn.execute(f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) "
                     f"INSERT INTO {table} SELECT randomblob(1000) FROM n")


def wait_for(condition: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_a_commit_over_the_size_wakes_the_thread_instead_of_checkpointing(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    writer = apsw.Connection(path)
    writer.pragma("journal_mode", "wal")
    writer.execute("CREATE TABLE seed (x)")
    checkpoints = Gated(path, pages=100)
    try:
        checkpoints.watch(writer)
        before = os.path.getsize(path)
        fill(writer)
        # The commit returned with every page still only in the WAL: SQLite's own checkpoint would
        # have copied them into the file inside the commit.
        assert os.path.getsize(path) == before
        assert os.path.getsize(path + "-wal") > ROWS * 1000
        checkpoints.go.set()
        assert checkpoints.done.wait(10), "no checkpoint ran after a commit over the size"
        assert os.path.getsize(path) > ROWS * 1000  # the rows are in the database file now
        assert writer.execute("SELECT count(*) FROM t").fetchone() == (ROWS,)
    finally:
        checkpoints.go.set()
        checkpoints.close()
        writer.close()


def test_small_commits_leave_the_wal_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    writer = apsw.Connection(path)
    writer.pragma("journal_mode", "wal")
    checkpoints = Gated(path, pages=10_000)
    checkpoints.go.set()
    try:
        checkpoints.watch(writer)
        fill(writer)
        assert not checkpoints.done.wait(0.2)
    finally:
        checkpoints.close()
        writer.close()


def test_the_store_checkpoints_in_the_background_and_removes_the_wal_on_close(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    store = Store(path)
    try:
        before = os.path.getsize(path)
        store.local_writes("filling a table", fill)  # ~1,260 pages each
        store.local_writes("filling a table", lambda conn: fill(conn, "u"))
        store.local_writes("filling a table", lambda conn: fill(conn, "v"))
        assert wait_for(lambda: os.path.getsize(path) > before + 3 * ROWS * 1000), "the WAL was never checkpointed"
    finally:
        store.close()
    assert not Path(str(path) + "-wal").exists()  # the last connection to close checkpointed and removed it
    with apsw.Connection(str(path)) as conn:
        assert [conn.execute(f"SELECT count(*) FROM {t}").get for t in "tuv"] == [ROWS] * 3


def test_a_wal_that_vanishes_under_the_writer_leaves_no_checkpointer_on_the_orphan(tmp_path: Path) -> None:
    """Python's sqlite3 (another copy of SQLite) closing a connection in this process deletes the WAL
    under the store (design.md §9). The store reopens; the checkpoint thread's connection still had
    the orphaned WAL open, so it is replaced too: a checkpoint of the orphan after the reopen would
    copy its pages under the new WAL's. The file stays intact and later commits land."""
    import sqlite3

    from replica.errors import StoreError

    path = tmp_path / "app.db"
    store = Store(path)
    try:
        store.local_writes("test", lambda conn: fill(conn, "big"))
        first = store._wal
        other = sqlite3.connect(path)
        other.execute("SELECT count(*) FROM big").fetchone()
        other.close()  # it believes it is the last connection: checkpoints and deletes the WAL
        assert not os.path.exists(f"{path}-wal")
        try:
            store.local_writes("test", lambda conn: conn.execute("CREATE TABLE orphan (x)"))
        except StoreError as exc:
            assert "vanished" in str(exc)
        assert store._wal is not None and store._wal is not first  # a new checkpointer, on the real WAL
        assert first is not None and not first._thread.is_alive()
        store.local_writes("test", lambda conn: fill(conn, "after"))
    finally:
        store.close()
    conn = apsw.Connection(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM after").fetchall() == [(ROWS,)]
    finally:
        conn.close()
