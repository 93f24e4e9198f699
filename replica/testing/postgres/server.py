"""PostgresElectric: the fake's ``/v1/shape`` machinery fed from a real Postgres database.

For development and tests; not a production replacement for Electric. Everything about the
protocol (shape logs, chunks, offsets, headers, cursors, 409s, long-polls, the socket server)
is the fake's own code; this module only replaces where rows come from:

* **Snapshot**: when a shape is created, one REPEATABLE READ transaction reads its rows (the
  ``where`` in SQL) and ``pg_current_snapshot()`` (xmin, xmax, xip), which also goes out in
  ``snapshot-end``.
* **Changes**: a temporary logical replication slot (``test_decoding``), created before any
  snapshot and polled with ``pg_logical_slot_get_changes``, yields committed transactions in
  commit order with their xids and commit LSNs. A shape takes a transaction only if its
  snapshot does not already contain it (§4.5), so snapshot + log neither overlap nor gap: every
  transaction not in a snapshot commits after the slot was created, hence is decoded. Shapes are
  created and transactions applied under one lock, so none can be decoded before a shape that
  needs it exists.
* **Where**: Postgres evaluates it, for snapshots in the query, for changes on the old and new
  row (``SELECT <where> FROM (VALUES ($1::type, …))``, one query per changed row and shape),
  see ``PgTable.compile_where``.
* **Rotation**: TRUNCATE (in the change stream) and any DROP/ALTER/RENAME of a shape's table
  (the catalog, read at most every CATALOG_TTL by the poller and by requests) expire its
  shapes: clients get 409.

Whole snapshots and logs are kept in memory, as in the fake: size the tables for tests.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from replica.protocol import wire
from replica.testing.fake import responses as r
from replica.testing.fake.database import Change, Database, append_transaction
from replica.testing.fake.faults import Fault
from replica.testing.fake.responses import FakeResponse
from replica.testing.fake.service import ShapeService
from replica.testing.fake.shapes import ShapeDef, ShapeLog
from replica.testing.fake.subquery import has_subquery
from replica.testing.fake.tables import Table
from replica.testing.fake.writes import WriteEndpoint
from replica.testing.postgres import subshape
from replica.testing.postgres.catalog import PgConn, PgTable, Snapshot, ensure_full_identity, read_tables, take_snapshot
from replica.testing.postgres.decode import Transaction, fit_rows, parse_lsn, read_transactions
from replica.testing.postgres.subquery import Subqueries
from replica.testing.postgres.writes import in_postgres

__all__ = ["PostgresElectric"]

log = logging.getLogger("replica.testing.postgres")

_GET_CHANGES = (
    "SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_changes($1, NULL, $2,"
    " 'include-xids', '1', 'skip-empty-xacts', '1')"
)
# Rows per poll. Postgres checks the limit only after a whole transaction, so batches never
# split one; the limit only stops a backlog of many transactions from arriving at once.
_MAX_CHANGES = 10_000
CATALOG_TTL = 0.1  # seconds a catalog read stays fresh: DDL rotates shapes within about this


class PgShapeLog(ShapeLog):
    """A shape log whose snapshot is read from Postgres; knows which transactions it contains."""

    def __init__(self, definition: ShapeDef, handle: str, table: PgTable, *, chunk_bytes: int, conn: PgConn,
                 generation: int) -> None:
        self.table = table
        self.generation = generation
        self._conn = conn
        self._visible: Snapshot | None = None
        #: A subquery shape's judge and copies of the tables it reads (``subquery.py``); None for a plain shape.
        self.subqueries: Subqueries | None = None
        super().__init__(definition, handle, table, chunk_bytes=chunk_bytes, snapshot_xid=0)

    @property
    def reads(self) -> set[tuple[str, str]]:
        """The tables whose changes this shape takes: its own, and those its subqueries read."""
        return self.subqueries.relations if self.subqueries is not None else {(self.table.schema, self.table.name)}

    def read_tables(self) -> list[PgTable]:
        return list(self.subqueries.tables.values()) if self.subqueries is not None else [self.table]

    def _take_snapshot(self, table: Table, xid: int) -> list[list[bytes]]:
        assert isinstance(table, PgTable)
        if has_subquery(self.definition.where):
            self._visible, chunks = subshape.snapshot(self, table, self._conn)
            return chunks
        wanted = set(self.columns) | set(table.pk)
        columns = [c for c in table.columns if c in wanted]
        with_rows = self.definition.log == wire.LOG_FULL
        snap = take_snapshot(self._conn, table, columns, self.definition.where, self.definition.params, rows=with_rows)
        self._visible = snap
        return self.chunk_snapshot(table, snap.rows, xmin=snap.xmin, xmax=snap.xmax, xip=sorted(snap.xip))

    def sees(self, xid: int) -> bool:
        assert self._visible is not None
        return self._visible.sees(xid)


class PgDatabase(Database):
    """The fake's Database (lock, shape registry, handles, expiry) over Postgres tables.

    ``tables`` stays empty: tables are read from the catalog when asked for.
    """

    def __init__(self, conn: PgConn, *, chunk_bytes: int, start_lsn: int) -> None:
        super().__init__(chunk_bytes=chunk_bytes, seed=0, start_lsn=start_lsn, clock=time.time)
        self.conn = conn
        self.generation = 0  # counts shape creations, to tell shapes older than a catalog read
        self._catalog: dict[tuple[str, str], tuple[float, PgTable | None]] = {}

    def describe(self, schema: str, name: str) -> PgTable | None:
        """The table from the catalog, read at most every CATALOG_TTL seconds (the catalog query
        costs milliseconds, and every request asks)."""
        with self.lock:
            cached = self._catalog.get((schema, name))
        if cached is not None and time.monotonic() - cached[0] < CATALOG_TTL:
            return cached[1]
        found = read_tables(self.conn, name=(schema, name))
        self.remember({(schema, name): found[0] if found else None})
        return found[0] if found else None

    def remember(self, tables: Mapping[tuple[str, str], PgTable | None]) -> None:
        now = time.monotonic()
        with self.lock:
            self._catalog.update({key: (now, table) for key, table in tables.items()})

    def find_table(self, schema: str, name: str) -> Table | None:
        table = self.describe(schema, name)
        # A request for a table that changed since its shapes were made: rotate them now
        # rather than at the next catalog check, so this very request gets the 409.
        with self.lock:
            stale = [log for log in self._logs() if log.relation == [schema, name]
                     and (table is None or log.table.fingerprint != table.fingerprint)]
            for shape_log in stale:
                self.expire(shape_log)
        if stale:
            self.on_change()
        return table

    def shape(self, definition: ShapeDef) -> ShapeLog:
        with self.lock:
            existing = self.shapes.get(definition)
            if existing is not None:
                return existing
            # Always fresh: the snapshot query names the columns.
            found = read_tables(self.conn, name=(definition.schema, definition.table))
            if not found:
                raise LookupError(f"table {definition.schema}.{definition.table} no longer exists")
            table = found[0]
            self.remember({(table.schema, table.name): table})
            ensure_full_identity(self.conn, table)
            self.generation += 1
            created = PgShapeLog(definition, self._new_handle(definition), table, chunk_bytes=self.chunk_bytes,
                                 conn=self.conn, generation=self.generation)
            self.shapes[definition] = created
            self.by_handle[created.handle] = created
            return created

    def _logs(self) -> list[PgShapeLog]:
        return [log for log in self.shapes.values() if isinstance(log, PgShapeLog)]

    def watched(self) -> tuple[int, list[int], set[tuple[str, str]]]:
        """(generation, oids, names) of the tables with shapes: what the poller decodes and checks."""
        with self.lock:
            logs = self._logs()
            return (self.generation, sorted({t.oid for s in logs for t in s.read_tables()}),
                    {relation for s in logs for relation in s.reads})

    def expire_all(self) -> None:
        with self.lock:
            for shape_log in list(self.shapes.values()):
                self.expire(shape_log)

    def apply(self, transactions: Sequence[Transaction], catalog: Mapping[int, PgTable] | None, generation: int) -> bool:
        """Rotate shapes whose table changed in ``catalog`` (if read: after the transactions were
        decoded), then append each transaction to the shapes whose snapshot lacks it."""
        changed = False
        with self.lock:
            for shape_log in self._logs() if catalog is not None else []:
                # Shapes newer than the catalog read were made from a catalog at least as new.
                if shape_log.generation <= generation and any(
                    catalog.get(t.oid) is None or catalog[t.oid].fingerprint != t.fingerprint
                    for t in shape_log.read_tables()
                ):
                    self.expire(shape_log)
                    changed = True
            for tx in transactions:
                self.lsn = max(self.lsn, tx.lsn)
                takers = [shape_log for shape_log in self._logs() if not shape_log.sees(tx.xid)]
                for shape_log in [s for s in takers if s.subqueries is not None]:
                    appended = subshape.transaction(shape_log, tx)
                    if appended is None:
                        self.expire(shape_log)
                    changed |= appended is not False
                takers = [s for s in takers if s.subqueries is None]
                if takers:
                    changed |= self._apply_one(tx, takers)
        return changed

    def _apply_one(self, tx: Transaction, takers: list[PgShapeLog]) -> bool:
        changes: list[Change] = []
        indexes: list[int] = []
        for index, change in enumerate(tx.changes):
            targets = [s for s in takers if not s.expired and tuple(s.relation) in change.relations]
            if not targets or change.operation == "skipped":
                continue
            table = targets[0].table
            rows = fit_rows(change, table.columns) if change.operation != "truncate" else None
            if rows is None:
                # TRUNCATE: Electric answers 409. A row that does not fit the shape's columns
                # means the table changed under us: same remedy.
                for shape_log in targets:
                    self.expire(shape_log)
                continue
            changes.append((table, *rows))
            indexes.append(index)
        live = [s for s in takers if not s.expired]
        if changes and live:
            append_transaction(live, changes, tx.xid, tx.lsn, indexes)
        return bool(changes) or len(live) < len(takers)


class _Poller:
    """Owns the replication slot: polls it, checks the catalog, feeds the database."""

    def __init__(self, dsn: str, db: PgDatabase, interval: float) -> None:
        self.db = db
        self.interval = interval
        self.conn = PgConn(dsn, read_only=False)
        self.slot = f"replica_dev_{secrets.token_hex(6)}"
        self.stopping = threading.Event()
        self.polls = 0
        self.read_to: str | None = None  # WAL flush position up to which the slot has been read
        self.checked = 0.0  # time.monotonic() of the last catalog check
        self.gate = threading.Lock()  # held for a whole poll, read to apply: ``paused`` waits for one under way
        self.db.lsn = self._create_slot()
        self.thread = threading.Thread(target=self._run, name="replica-pg-poller", daemon=True)

    def _create_slot(self) -> int:
        # Temporary: dropped by Postgres when this session ends, so nothing is left behind.
        (lsn,) = self.conn.rows("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'test_decoding', true)",
                                [self.slot])[0]
        return parse_lsn(str(lsn))

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                more = self.poll()
            except Exception as exc:
                if self.stopping.is_set():
                    return
                # Changes may have been consumed and not applied: every shape must be rebuilt,
                # and a new session needs a new (temporary) slot.
                log.error("Postgres dev server: change stream failed (%s); rotating every shape", exc)
                self.db.expire_all()
                self.db.on_change()
                self.stopping.wait(1.0)
                try:
                    self.conn.close()
                    self.slot = f"replica_dev_{secrets.token_hex(6)}"
                    with self.db.lock:  # no shape may snapshot before the new slot exists
                        self.db.expire_all()
                        self.db.lsn = max(self.db.lsn, self._create_slot())
                except psycopg.Error:
                    pass
                continue
            if not more:
                self.stopping.wait(self.interval)

    def poll(self) -> bool:
        """One round; True when it returned a full batch (more may be waiting)."""
        with self.gate:
            return self._poll()

    def _poll(self) -> bool:
        # Decoding re-reads WAL from the slot's restart point (milliseconds); asking whether any
        # WAL was flushed since the last read costs a tenth of that, so idle polls stay cheap.
        # (Decoding reads only flushed WAL, so the flush position is the right yardstick.)
        (flushed,) = self.conn.rows("SELECT pg_current_wal_flush_lsn()::text")[0]
        rows: list[tuple[Any, ...]] = []
        if flushed != self.read_to:
            rows = self.conn.rows(_GET_CHANGES, [self.slot, _MAX_CHANGES])
            self.read_to = flushed if len(rows) < _MAX_CHANGES else None
        self.polls += 1
        generation, oids, relations = self.db.watched()
        catalog: dict[int, PgTable] | None = None
        if oids and time.monotonic() - self.checked >= CATALOG_TTL:
            # Read after the changes, so DDL committed before one of them is usually seen now; if
            # not, a row that does not fit its shape's columns rotates the shape (fit_rows).
            tables = read_tables(self.conn, oids=oids)
            self.db.remember({(t.schema, t.name): t for t in tables})
            catalog = {t.oid: t for t in tables}
            self.checked = time.monotonic()
        transactions = read_transactions(rows, lambda schema, name: (schema, name) in relations)
        if self.db.apply(transactions, catalog, generation):
            self.db.on_change()
        return self.read_to is None

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(10)
        self.conn.close()


class PostgresElectric(ShapeService):
    """Serve ``/v1/shape`` for the tables of the Postgres database at ``dsn`` (for development
    and tests, not production). Needs ``wal_level=logical`` and a role that may create
    replication slots and ALTER the tables (REPLICA IDENTITY FULL is set on a table's first shape).

        with PostgresElectric(dsn) as source, serve_in_thread(source) as server:
            ...  # point replica at server.url, write with psycopg

    ``poll_interval``: seconds between polls of the replication slot when it is idle (the floor
    of the write → visible latency). ``sse_timeout`` / ``keepalive_interval``: as ``FakeElectric``'s.
    """

    def __init__(
        self,
        dsn: str,
        *,
        chunk_bytes: int = 10 * 1024 * 1024,
        long_poll_timeout: float = 20.0,
        secret: str | None = None,
        poll_interval: float = 0.005,
        sse_timeout: float = 60.0,
        keepalive_interval: float = 21.0,
    ) -> None:
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        self._conn, self._dsn = PgConn(dsn, read_only=True), dsn
        db = PgDatabase(self._conn, chunk_bytes=chunk_bytes, start_lsn=0)
        # The slot exists before the first snapshot: the decoder sees every later transaction.
        self._poller = _Poller(dsn, db, poll_interval)
        super().__init__(db, long_poll_timeout=long_poll_timeout, secret=secret, seed=0, sse_timeout=sse_timeout,
                         keepalive_interval=keepalive_interval)
        self._poller.thread.start()

    def enable_writes(self) -> WriteEndpoint:
        """Serve ``POST /v1/writes`` (off by default): each batch one Postgres transaction (postgres/writes.py)."""
        self.writes = WriteEndpoint(in_postgres(self._dsn, self._db.find_table))
        return self.writes

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold back the change stream inside the block (for tests of snapshot/log consistency):
        transactions committed meanwhile are applied after it, and a shape created inside it
        already has them in its snapshot, and they arrive together: a poll under way when the block
        begins finishes first, so it cannot read some of them and apply them apart from the rest.
        Requests from other threads wait too."""
        with self._poller.gate, self._db.lock:
            yield

    def close(self) -> None:
        """Stop polling and disconnect (the temporary slot goes with its session)."""
        self._poller.stop()
        self._conn.close()

    def __enter__(self) -> PostgresElectric:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def respond(self, method: str, target: str, headers: Mapping[str, str] | None = None) -> FakeResponse:
        try:
            return super().respond(method, target, headers)
        except (psycopg.Error, LookupError) as exc:
            return _database_error(exc)

    async def exchange(
        self, method: str, target: str, headers: Mapping[str, str] | None = None, *, on_wire: bool = False
    ) -> tuple[FakeResponse, Fault | None]:
        try:
            return await super().exchange(method, target, headers, on_wire=on_wire)
        except (psycopg.Error, LookupError) as exc:
            return _database_error(exc), None


def _database_error(exc: Exception) -> FakeResponse:
    """Electric's answers when Postgres fails under a request: 503 (retry) for a lost connection,
    else 500; a table dropped mid-request is a 500 too, and the retry then gets the 400."""
    base: dict[str, str] = r.base_headers("PG" + secrets.token_hex(7).upper(), None, shape_route=True)
    if isinstance(exc, psycopg.OperationalError):
        body: dict[str, Any] = {"code": "database_unreachable", "error": "Database is unreachable"}
        return r.error_response(503, body, base, retry_after=1)
    log.warning("Postgres dev server: request failed: %s", exc)
    return r.error_response(500, {"error": "Internal server error"}, base)
