"""The Store: the only writer of the SQLite file, over one apsw connection in WAL mode.

Each ``apply`` is one short ``BEGIN IMMEDIATE … COMMIT`` holding the rows and the checkpoint
together (R1), so the write lock is never held across network waits and apps can write their own
tables in the same file. Unfinished snapshots and bursts are staged on disk (``positions`` says
where) and published in one transaction at up-to-date (``publish``): readers on other
connections only ever see up-to-date boundaries (R2), and memory does not grow with the shape (R10).

apsw errors become ``StoreError`` here and nowhere else, chained with ``from`` and worded with the
remedy; ``publish``, which runs inside this boundary, only turns a schema SQLite refuses as a
table into ``ShapeError``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import replace
from typing import Self, TypeVar

import apsw

from replica import fast
from replica.errors import ProtocolError, ShapeError, StoreError
from replica.protocol.shape import Shape
from replica.protocol.shapelog import Checkpoint, Commit
from replica.protocol.snapshot import InsertBody
from replica.protocol.txids import Visibility
from replica.status import STATES, ShapeStatus
from replica.store import changelog, overlay, positions, snapshots, tables, txlog
from replica.store.file import StoreLock, describe_apsw_error, make_private, wal_missing
from replica.store.positions import STATE_SQL, Pending
from replica.store.publish import Applied, publish, publish_stage
from replica.store.wal import Checkpoints
from replica.typemap.schema import TableSchema, check_table_name, fold_ident

__all__ = ["STATE_SQL", "Applied", "Pending", "Store"]
T = TypeVar("T")


def _complete(commit: Commit) -> int:
    if commit.complete is None:
        raise ShapeError(
            "an up-to-date without global_last_seen_lsn: consistency groups need Electric 1.0 or later "
            "(or give the shape consistent=False)"
        )
    return commit.complete


class Store:
    """The SQLite file replica writes. Thread-safe; one instance (and one process) per file."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self._mutex = threading.RLock()  # apply runs in a worker thread; status may come from another
        self._claims: dict[str, Shape] = {}
        self._conn: apsw.Connection | None = None
        memory = self.path in ("", ":memory:")
        # Opened with URI names on (to ATTACH rows converted ahead, replica.fast): a path is never one.
        self._open_path = self.path if memory else os.path.abspath(self.path)
        self._writer_lock = None if memory else StoreLock.acquire(self.path)
        self._busy_timeout = busy_timeout
        self._file_backed = not memory
        self._wal: Checkpoints | None = None  # WAL checkpoints off the writer's commits (store.wal)
        try:
            with self._translate("opening the database"):
                if not memory:
                    make_private(self.path)
                self._open()
                with self._transaction():
                    self._connection().execute(STATE_SQL)
                    positions.add_missing_columns(self._connection())
                    positions.drop_legacy_stages(self._connection())
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI
        conn = self._conn = apsw.Connection(self._open_path, flags=flags)
        conn.set_busy_timeout(int(self._busy_timeout * 1000))
        if conn.readonly("main"):  # SQLite opens a write-protected file read-only, silently
            raise StoreError(f"{self.path} is read-only: make the file, its -wal/-shm files and the directory "
                             "writable by this user (replica writes the database it syncs)")
        mode = str(conn.pragma("journal_mode", "wal")).lower()
        if mode not in ("wal", "memory"):
            raise StoreError(f"{self.path}: SQLite could not switch to WAL mode (got {mode!r}); "
                             "use a local filesystem (WAL does not work over network filesystems)")
        conn.pragma("synchronous", "NORMAL")
        if self._file_backed and mode == "wal":  # a reopen replaced the old one first (_transaction)
            self._wal = Checkpoints(self._open_path)
            self._wal.watch(conn)
        fast.register(conn)

    # --- reading positions ---

    def checkpoint(self, shape: Shape) -> Checkpoint | None:
        """Where to resume ``shape``: the staging position, else the published one, else None.

        None also when the stored position was made for another definition (R8), or when what
        is staged no longer fits (the table was dropped, the shape's types changed): the next
        commits then refetch, and the old rows stay visible until that publishes.
        """
        name = shape.local_name
        definition = shape.definition()
        with self._mutex, self._translate(f"reading the checkpoint of {name!r}"):
            self._claim(shape)
            conn = self._connection()
            stage = positions.load_stage(conn, name)
            if stage is not None and stage.definition == definition:
                if not self._stage_usable(shape, stage):
                    return None
                return Checkpoint(stage.handle, stage.offset, stage.cursor, stage.schema, up_to_date=False)
            published = positions.load_published(conn, name)
            if published is None or published.offset is None or published.definition != definition:
                return None
            if not tables.table_exists(conn, overlay.stored_name(name, shape.writable)):
                return None
            return Checkpoint(published.handle, published.offset, published.cursor, published.schema, up_to_date=True)

    def _stage_usable(self, shape: Shape, stage: positions.Stage) -> bool:
        conn, name = self._connection(), shape.local_name
        if not stage.refetch:
            return tables.table_exists(conn, overlay.stored_name(name, shape.writable))  # else dropped outside replica
        if stage.schema is None or not snapshots.exists(conn, name):
            return False  # staged by an older replica, or dropped: fetch the snapshot again
        return snapshots.matches(conn, name, TableSchema.from_electric(stage.schema, shape.overrides))

    # --- writing ---

    def apply(self, commit: Commit, conversion: fast.Conversion | None = None, *, defer: bool = False) -> Applied:
        """Stage (``up_to_date`` False) or publish (True) one commit, in one transaction (R1).

        ``conversion``: the one ``fast.Converter.start`` began for the body of this commit, if
        any; it is used only if the commit carries that very body (``Conversion.parts_for``).
        ``defer``: a member of a consistency group stages even an up-to-date commit, noting how far
        the shape is complete; ``publish_group`` makes it visible with the other members.

        Re-applying a commit is harmless (R3): inserts upsert, updates merge, deletes of missing
        rows do nothing, and a commit older than the stored position of the same handle is skipped.
        """
        name = commit.shape.local_name
        table = commit.table_schema() if isinstance(commit.changes, InsertBody) else None
        parts = conversion.parts_for(commit.changes, table) if conversion else None  # waited for outside the mutex
        with self._mutex, self._translate(f"writing shape {name!r}"):
            self._claim(commit.shape)
            with fast.attached(self._connection(), parts) as attached, self._transaction():
                if commit.up_to_date and not defer:
                    return self._publish(commit, attached)
                return self._stage(commit, attached)

    def publish_group(self, group: str, shapes: Sequence[Shape], upto: int) -> list[Applied]:
        """Make every member's staged changes at or below the LSN ``upto`` visible, in one transaction (R11).

        A staged snapshot must have reached up-to-date (being at or below ``upto`` is the group's call).
        Members with nothing staged are left as they are. Records ``upto`` as the group's LSN.
        """
        now = time.time()
        with self._mutex, self._translate(f"publishing group {group!r}"), self._transaction():
            conn = self._connection()
            applied = []
            for shape in shapes:
                self._claim(shape)
                name = shape.local_name
                stage = positions.load_stage(conn, name)
                if stage is None or stage.definition != shape.definition():
                    continue
                done = publish_stage(conn, shape, positions.load_published(conn, name), stage, upto, now)
                if done.staged:  # what is left waits, no longer as a snapshot
                    positions.save_stage(conn, name, replace(stage, refetch=False, snapshot_lsn=None, snapshot=None,
                                                             changes=done.staged))
                else:
                    self._clear_stage(name)
                applied.append(done)
            conn.execute('INSERT OR REPLACE INTO "_replica_groups" ("name", "lsn", "published_at") VALUES (?, ?, ?)',
                         (group, upto, now))
            return applied

    def pending(self, shape: Shape) -> Pending | None:
        """What a consistency group's member has staged: None if nothing (a stage of another
        definition counts as nothing: the member's next commit starts over)."""
        with self._mutex, self._translate(f"reading the stage of {shape.local_name!r}"):
            conn = self._connection()
            stage = positions.load_stage(conn, shape.local_name)
            if stage is None or stage.definition != shape.definition():
                return None
            witness = None if stage.snapshot_lsn is None else txlog.first_after(conn, stage.snapshot, stage.txids_from)
            return Pending(stage.refetch, stage.snapshot_lsn, changelog.count(conn, shape.local_name),
                           changelog.lowest(conn, shape.local_name), witness)

    def local_writes(self, action: str, work: Callable[[apsw.Connection], T], write: bool = True) -> T:
        """Run ``work`` (``store.outbox``'s operations) in one transaction of its own (a read: ``write`` False)."""
        with self._mutex, self._translate(action), self._transaction() if write else nullcontext():
            return work(self._connection())

    def visible(self) -> tuple[list[tuple[int, int | None, str, float]], list[tuple[str, Visibility]]]:
        """The published transactions kept, and what each published snapshot saw (``txlog``)."""
        with self._mutex, self._translate("reading the published transactions"):
            return txlog.recent(self._connection()), txlog.snapshots(self._connection())

    def _stage(self, commit: Commit, attached: fast.Attached | None) -> Applied:
        conn = self._connection()
        name, definition, checkpoint = commit.shape.local_name, commit.shape.definition(), commit.checkpoint
        published = positions.load_published(conn, name)
        rows = published.rows if published else 0
        stage = self._current_stage(commit)
        if positions.is_redelivery(commit, stage, published.position() if published else None):
            return Applied(name, rows=rows, staged=stage.changes if stage else 0)
        if stage is None:
            continues = published is not None and published.continued_by(definition, checkpoint.handle)
            refetch = commit.refetch or not continues
            known = published.schema if published is not None and continues else None
            stage = positions.Stage(definition, checkpoint.handle, checkpoint.offset, checkpoint.cursor, known, refetch,
                                    txids_from=txlog.last_rowid(conn) if refetch else None)
        schema = checkpoint.schema or stage.schema
        if schema is None:
            raise ProtocolError(f"no electric-schema known for shape {name!r}: cannot stage its changes")
        table = commit.table if commit.table is not None else TableSchema.from_electric(schema, commit.shape.overrides)
        messages = () if isinstance(commit.changes, InsertBody) else commit.changes
        snapshot_lsn = stage.snapshot_lsn
        if stage.refetch and snapshot_lsn is None:  # the snapshot itself: changed in place
            if not snapshots.exists(conn, name):
                snapshots.create(conn, name, table)
            elif not snapshots.matches(conn, name, table):
                raise StoreError(f"the snapshot staged for {name!r} has other columns now; it is fetched again")
            added = snapshots.append(conn, name, commit.changes, table, attached, tagged=commit.shape.subquery)
            if commit.up_to_date:  # deferred: from here on, changes wait after the complete snapshot
                snapshot_lsn = _complete(commit)
        else:
            changes = commit.changes.changes() if isinstance(commit.changes, InsertBody) else commit.changes
            added = changelog.append(conn, name, changes, table)
        txlog.stage(conn, name, messages)
        stage = positions.Stage(
            definition, checkpoint.handle, checkpoint.offset, checkpoint.cursor, schema, stage.refetch,
            stage.changes + added, snapshot_lsn, commit.snapshot or stage.snapshot, stage.txids_from)
        positions.save_stage(conn, name, stage)
        return Applied(name, rows=rows, staged=stage.changes, lsn=commit.complete)

    def _publish(self, commit: Commit, attached: fast.Attached | None) -> Applied:
        conn = self._connection()
        name = commit.shape.local_name
        published = positions.load_published(conn, name)
        stage = self._current_stage(commit)
        if positions.is_redelivery(commit, stage, published.position() if published else None):
            return Applied(name, rows=published.rows if published else 0, staged=stage.changes if stage else 0)
        applied = publish(conn, commit, published, stage, attached, time.time())
        self._clear_stage(name)
        return applied

    def _current_stage(self, commit: Commit) -> positions.Stage | None:
        """The stage this commit continues; a stage it cannot continue is discarded first."""
        conn = self._connection()
        name = commit.shape.local_name
        stage = positions.load_stage(conn, name)
        if stage is None:
            return None
        handle = commit.checkpoint.handle
        foreign = stage.handle is not None and handle is not None and stage.handle != handle
        if commit.refetch or stage.definition != commit.shape.definition() or foreign:
            # A new snapshot (409, new definition, new handle) never mixes with the old one's rows.
            self._clear_stage(name)
            return None
        return stage

    def _clear_stage(self, name: str) -> None:
        conn = self._connection()
        conn.execute('DELETE FROM "_replica_stages" WHERE "name" = ?', (name,))
        changelog.clear(conn, name)
        snapshots.drop(conn, name)
        txlog.discard(conn, name)

    # --- status ---

    def status(self, name: str | None = None) -> list[ShapeStatus]:
        """Every shape's status (or just ``name``'s), from ``_replica_shapes``, sorted by name."""
        with self._mutex, self._translate("reading status"):
            return positions.statuses(self._connection(), name)

    def set_state(self, name: str, state: str, error: str | None = None) -> None:
        """Record a shape's state (and error, or clear it) in its own small transaction."""
        if state not in STATES:
            raise ValueError(f"state must be one of {sorted(STATES)}, got {state!r}")
        with self._mutex, self._translate(f"recording the state of {name!r}"), self._transaction():
            self._connection().execute(
                'INSERT INTO "_replica_shapes" ("name", "state", "error") VALUES (?, ?, ?) '
                'ON CONFLICT ("name") DO UPDATE SET "state" = excluded."state", "error" = excluded."error"',
                (name, state, error),
            )

    def reset(self, name: str) -> bool:
        """Forget where ``name`` stands, so it resyncs from -1; its rows stay until that publishes.

        Returns False if the store knows nothing about ``name``.
        """
        with self._mutex, self._translate(f"resetting {name!r}"), self._transaction():
            conn = self._connection()
            staged = positions.load_stage(conn, name) is not None
            self._clear_stage(name)
            conn.execute(
                'UPDATE "_replica_shapes" SET "handle" = NULL, "offset" = NULL, "cursor" = NULL WHERE "name" = ?',
                (name,),
            )
            return staged or conn.changes() > 0

    # --- lifecycle ---

    @property
    def connection(self) -> apsw.Connection:
        """The apsw connection, for diagnostics and fault injection in tests. Do not write through it."""
        return self._connection()

    def close(self) -> None:
        """Close the connection and release the single-writer lock. Safe to call twice."""
        with self._mutex:
            conn, self._conn = self._conn, None
            wal, self._wal = self._wal, None
            try:
                if wal is not None:
                    wal.close()  # before the last connection, which checkpoints and removes the WAL
                if conn is not None:
                    with self._translate("closing the database"):
                        conn.close()
            finally:
                if self._writer_lock is not None:
                    self._writer_lock.release()
                    self._writer_lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- helpers ---

    def _connection(self) -> apsw.Connection:
        if self._conn is None:
            raise StoreError(f"the store for {self.path} is closed")
        return self._conn

    def _claim(self, shape: Shape) -> None:
        check_table_name(shape.local_name)
        other = self._claims.setdefault(fold_ident(shape.local_name), shape)  # SQLite names ignore ASCII case
        if other.definition() != shape.definition():
            raise ShapeError(f"shapes {_describe(other)} and {_describe(shape)} both target the local table "
                             f"{shape.local_name!r}; give one of them another name")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
                with suppress(apsw.Error):  # the original error is the one worth reporting
                    conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if self._file_backed and wal_missing(self.path):
            # Our commits would go to an orphaned WAL. Start over on the real file, whose
            # checkpoint matches its rows (R1); the syncer resumes from there.
            conn.close()
            if self._wal is not None:  # its connection sees the orphaned WAL too: it must not checkpoint it later
                self._wal.close()  # (the last connection: it checkpoints and closes as the writer's own did)
                self._wal = None
            self._open()
            raise StoreError(
                f"{self.path}: the WAL file vanished under replica's writer: another copy of SQLite in "
                "this process (Python's sqlite3 module?) closed a connection to this database. Inside "
                "the syncing process read with replica.connect(); the last commit is synced again"
            )

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except apsw.Error as exc:
            raise StoreError(describe_apsw_error(exc, self.path, action)) from exc
        except UnicodeEncodeError as exc:
            # JSON may escape a lone surrogate ("\ud800"), which no SQLite text can hold.
            raise ProtocolError(
                f"{action} in {self.path} failed: the server sent a text that is not valid Unicode "
                f"({exc.reason}: {exc.object[exc.start : exc.end]!r}); it cannot be stored"
            ) from exc


def _describe(shape: Shape) -> str:
    where = f" where {shape.where}" if shape.where else ""
    return f"({shape.table}{where})"
