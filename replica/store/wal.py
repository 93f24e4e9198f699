"""SQLite's WAL checkpoints, run on a thread of their own rather than inside the writer's commits.

By default SQLite checkpoints once the WAL passes 1,000 pages (~4 MB), inside the commit that
crossed the line: it copies the WAL's pages into the database file and, with ``synchronous=NORMAL``,
syncs both files to disk. During an initial sync that is every ~10 MB snapshot chunk, and the
writer, whose next commit (a publish, say) waits behind it, waited for the disk: 30-130 ms per
chunk on this machine's disk, for ~10 ms of CPU (docs/design.md §9).

Here the writer's commit only notes the WAL's size (SQLite's WAL hook, which replaces its
automatic checkpoint) and wakes a thread that runs the same PASSIVE checkpoint on a connection of
its own. A PASSIVE checkpoint never blocks the writer, nor the writer it. What a commit makes
durable is unchanged (SQLite's NORMAL: the WAL holds it), and the WAL is still copied back once it
passes the same size; the last connection to close still checkpoints and removes it.
"""

from __future__ import annotations

import logging
import threading

import apsw

__all__ = ["AUTOCHECKPOINT_PAGES", "Checkpoints"]

log = logging.getLogger("replica")

AUTOCHECKPOINT_PAGES = 1000  # SQLite's own default (``PRAGMA wal_autocheckpoint``)


class Checkpoints:
    """A thread that checkpoints the WAL of ``path`` whenever a watched connection's commit left
    at least ``pages`` pages in it. ``watch`` a connection; ``close`` before closing the others."""

    def __init__(self, path: str, pages: int = AUTOCHECKPOINT_PAGES) -> None:
        self._pages = pages
        self._conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_URI)
        self._conn.pragma("journal_mode")  # reads the file: until then the connection knows of no WAL to checkpoint
        self._due = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="replica-wal", daemon=True)
        self._thread.start()

    def watch(self, conn: apsw.Connection) -> None:
        """Let ``conn``'s commits wake this thread instead of checkpointing themselves."""
        conn.set_wal_hook(self._committed)

    def _committed(self, conn: apsw.Connection, name: str, pages: int) -> int:
        if name == "main" and pages >= self._pages:
            self._due.set()
        return apsw.SQLITE_OK

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._closing:
                return
            try:
                self._checkpoint()
            except apsw.Error as exc:  # the next commit over the size asks again; the last close checkpoints
                log.debug("WAL checkpoint of %s failed: %s", self._conn.filename, exc)

    def _checkpoint(self) -> None:
        self._conn.wal_checkpoint("main", apsw.SQLITE_CHECKPOINT_PASSIVE)

    def close(self) -> None:
        """Stop the thread (after a checkpoint under way) and close its connection. Safe to call twice."""
        self._closing = True
        self._due.set()
        self._thread.join()
        self._conn.close()
