"""The SQLite file around the store: file privacy, the single-writer lock, read-only connections
for readers, and the wording of SQLite failures (the store raises them; this only words them).
"""

from __future__ import annotations

import os
from typing import Any

import apsw

from replica.errors import StoreError

_fcntl: Any
try:
    import fcntl as _fcntl
except ImportError:  # Windows: no advisory lock; SQLite's own locking still keeps the file sane
    _fcntl = None

__all__ = ["LOCK_SUFFIX", "StoreLock", "connect", "describe_apsw_error", "make_private", "wal_missing"]

LOCK_SUFFIX = "-replica-lock"


def make_private(path: str) -> None:
    """Create the database file readable and writable by its owner only (0600) if it is new.

    SQLite gives the -wal and -shm files the database file's permissions. An existing file keeps
    the mode its owner chose.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror}; check the directory exists and is writable") from exc
    os.close(fd)


def connect(path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> apsw.Connection:
    """A read-only connection for reading replica's database inside the process that syncs it.

    apsw bundles its own copy of SQLite. Two copies of SQLite in one process (apsw's and the one
    behind Python's ``sqlite3`` module) do not see each other's POSIX locks, so on a WAL database
    they can delete the WAL or reset the shared-memory index under each other (SQLite's "How To
    Corrupt An SQLite Database File" §2.2.1). Inside the syncing process, read through apsw with
    this function; any other process may use any SQLite library.
    """
    conn = apsw.Connection(os.fspath(path), flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    conn.set_busy_timeout(int(busy_timeout * 1000))
    return conn


def wal_missing(path: str) -> bool:
    """True when a WAL database's -wal file is gone while our writer has it open.

    SQLite only deletes the WAL when the last connection closes, so this means another SQLite
    library in this process closed a connection and took the WAL with it: our later commits
    would land in an orphaned file that no reader sees.
    """
    return not os.path.exists(path + "-wal")


class StoreLock:
    """An exclusive advisory lock on a sidecar file: one replica writer per database (flock)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, path: str) -> StoreLock:
        if _fcntl is None:  # Windows
            return cls(None)
        lock_path = path + LOCK_SUFFIX
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise StoreError(
                f"cannot create the lock file {lock_path}: {exc.strerror}; check the directory is writable"
            ) from exc
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise StoreError(
                f"another replica is already writing {path} (it holds {lock_path}); "
                "only one writer per database: stop the other process, or use another file"
            ) from exc
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {lock_path}: {exc.strerror}") from exc
        return cls(fd)

    def release(self) -> None:
        # Closing the descriptor releases the lock; the file stays (removing it would race a new locker).
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def describe_apsw_error(exc: apsw.Error, path: str, action: str) -> str:
    """A message for a SQLite failure that says what to do about it."""
    detail = str(exc)
    if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
        remedy = (
            "the database is locked by another connection or process; keep the app's write "
            "transactions short (replica retries)"
        )
    elif isinstance(exc, apsw.FullError):
        remedy = "the disk (or a size limit) is full; free space and replica resumes from its last checkpoint"
    elif isinstance(exc, apsw.ReadOnlyError):
        remedy = "the database is read-only; make the file, its -wal/-shm files and the directory writable"
    elif isinstance(exc, (apsw.CantOpenError, apsw.PermissionsError, apsw.AuthError)):
        remedy = "cannot open or access the file; check the path, the directory and their permissions"
    elif isinstance(exc, (apsw.CorruptError, apsw.NotADBError)):
        remedy = "the file is not a SQLite database or is corrupt; restore it or point replica at a new file"
    elif isinstance(exc, apsw.IOError):
        remedy = "a disk I/O error; check the disk and filesystem"
    elif isinstance(exc, apsw.NoMemError):
        remedy = "SQLite ran out of memory"
    elif isinstance(exc, apsw.TooBigError):
        remedy = "a value exceeds SQLite's size limit (SQLITE_MAX_LENGTH)"
    elif isinstance(exc, apsw.ConstraintError):
        remedy = "a constraint rejected a row; a user-added trigger or constraint on a synced table may conflict"
    elif isinstance(exc, apsw.ExecTraceAbort):
        remedy = "an exec tracer aborted the statement"
    else:
        remedy = "SQLite failed"
    return f"{action} in {path} failed: {remedy} ({type(exc).__name__}: {detail})"
