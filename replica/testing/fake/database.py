"""The fake's source database: tables, transactions, and the shape logs they feed.

Every mutation is a transaction with one txid and one commit LSN. At commit, each row change
is turned into messages for every current shape of its table, at op positions ``2·i`` (and
``2·i+1`` for the insert half of a key change), so snapshot + log never gap or overlap: shapes
are created (snapshot taken) and transactions committed under the same lock.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from replica.protocol import wire
from replica.testing.fake.shapes import ShapeDef, ShapeLog, change_messages, parse_columns, resolver
from replica.testing.fake.tables import Row, Table

__all__ = ["Change", "Database", "Transaction", "append_transaction", "subquery_transaction"]

Change = tuple[Table, Row | None, Row | None]


def append_transaction(
    logs: Iterable[ShapeLog], changes: Sequence[Change], txid: int, lsn: int, indexes: Sequence[int] | None = None
) -> None:
    """Append one committed transaction to every log of the tables it changed: ops at ``lsn_2i``
    (``lsn_2i+1`` for the insert half of a key change), ``last`` on each log's final op.
    ``indexes``: each change's index in its transaction, when only some changes are passed on."""
    pending: dict[int, tuple[ShapeLog, list[tuple[int, dict[str, Any]]]]] = {}
    logs = list(logs)
    for log in logs:
        if log.moves is not None:
            subquery_transaction(log, changes, txid, lsn)
    logs = [log for log in logs if log.moves is None]
    for index, (table, old, new) in zip(indexes or range(len(changes)), changes, strict=True):
        for log in logs:
            if log.relation != [table.schema, table.name]:
                continue
            messages = change_messages(log, table, old, new)
            out = pending.setdefault(id(log), (log, []))[1]
            out.extend((2 * index + k, message) for k, message in enumerate(messages))
    for log, messages in pending.values():
        for n, (position, message) in enumerate(messages):
            headers = message["headers"]
            headers.update(txids=[txid], lsn=str(lsn), op_position=position)
            if n == len(messages) - 1:
                headers["last"] = True
            log.append(wire.Offset(lsn, position), message)


def subquery_transaction(
    log: ShapeLog, changes: Sequence[Change], txid: int, lsn: int, rows: Iterable[Row] | None = None
) -> None:
    """A subquery shape's part of a transaction: its root table's changes (with tags), then the moves
    the transaction made in any table it reads (``fake.subquery``), in Electric's order. ``rows``:
    the root table's rows after the transaction (default: the fake's own table's)."""
    assert log.moves is not None
    table, full = log.table, log.definition.replica == wire.REPLICA_FULL
    own: list[dict[str, Any]] = []
    for changed, old, new in changes:
        if [changed.schema, changed.name] == log.relation:
            own.extend(log.moves.change(table, old, new, full, log.columns))
    rows = table.rows.values() if rows is None else rows
    moves = log.moves.moves(table, rows, lambda row: log.project(table, row, snapshot=True))
    position = 0
    for n, message in enumerate(own):
        message["headers"].update(relation=log.relation, txids=[txid], lsn=str(lsn), op_position=position)
        if n == len(own) - 1:
            message["headers"]["last"] = True
        log.append(wire.Offset(lsn, position), message)
        position += 2
    for message in moves:
        headers = message["headers"]
        if "event" in headers:
            headers["txids"] = [txid]
        elif "key" in message:
            headers["relation"] = log.relation
        else:  # the snapshot-end of the moved-in rows: what the query that read them saw
            headers.update(xmin=str(txid + 1), xmax=str(txid + 1), xip_list=[])
        log.append(wire.Offset(lsn, position), message)
        position += 2


class Transaction:
    """Operations of one transaction; see ``FakeElectric.transaction``. ``lsn`` is set at commit."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.changes: list[Change] = []
        self.lsn: int | None = None
        self.txid: int | None = None  # Postgres' pg_current_xact_id(), set at commit

    def insert(self, table: str, row: Mapping[str, str | None]) -> None:
        """Insert a row; columns not given are NULL. A duplicate identity raises ValueError."""
        t = self._db.table(table)
        new = t.full_row(row)
        identity = t.identity(new)
        if identity in t.rows:
            raise ValueError(f"duplicate key {dict(zip(t.pk, identity, strict=True))} in {t.name!r}")
        self._apply(t, None, new)

    def update(
        self,
        table: str,
        row: Mapping[str, str | None],
        new: Mapping[str, str | None] | None = None,
    ) -> None:
        """Update one row. Its identity columns in ``row`` find it (the PK, or every column of a
        table without one); the other columns of ``row`` and everything in ``new`` are set.
        Change a primary key with ``new``: ``update("items", {"id": "1"}, new={"id": "9"})``."""
        t = self._db.table(table)
        old = t.find(row)
        assignments = {c: v for c, v in row.items() if c not in t.pk}
        assignments.update(new or {})
        updated = dict(old)
        for column, value in assignments.items():
            updated[column] = t.canonical(column, value)
        if t.identity(updated) != t.identity(old) and t.identity(updated) in t.rows:
            raise ValueError(f"duplicate key {dict(zip(t.pk, t.identity(updated), strict=True))} in {t.name!r}")
        self._apply(t, old, updated)

    def delete(self, table: str, row: Mapping[str, str | None]) -> None:
        """Delete the row whose identity columns are given in ``row``."""
        t = self._db.table(table)
        self._apply(t, t.find(row), None)

    def _apply(self, table: Table, old: Row | None, new: Row | None) -> None:
        if old is not None:
            del table.rows[table.identity(old)]
        if new is not None:
            table.rows[table.identity(new)] = new
        self.changes.append((table, old, new))

    def _rollback(self) -> None:
        for table, old, new in reversed(self.changes):
            if new is not None:
                del table.rows[table.identity(new)]
            if old is not None:
                table.rows[table.identity(old)] = old


class Database:
    """Tables and shape logs behind one re-entrant lock; ``on_change`` runs after each commit/rotation."""

    def __init__(self, *, chunk_bytes: int, seed: int, start_lsn: int, clock: Callable[[], float]) -> None:
        self.lock = threading.RLock()
        self.chunk_bytes = chunk_bytes
        self.clock = clock
        self.tables: dict[tuple[str, str], Table] = {}
        self.shapes: dict[ShapeDef, ShapeLog] = {}  # the current log of each definition
        self.by_handle: dict[str, ShapeLog] = {}  # every log ever created, expired ones too
        self.lsn = start_lsn  # the last commit LSN ("global last seen LSN")
        self.lsn_before = start_lsn  # the commit LSN before it
        #: Report a snapshot's up-to-date at ``lsn_before`` when the snapshot saw the last commit: what
        #: Electric does when it reads a snapshot before its replication stream has processed that commit.
        self.lag_snapshots = False
        self.txid = 750
        self._rng = random.Random(seed)
        self._last_handle_us = 0
        self._in_transaction = False
        self.on_change: Callable[[], None] = lambda: None

    # --- tables ---

    def table(self, name: str) -> Table:
        """A table by ``name`` (unique across schemas), ``schema.name`` or quoted names."""
        with self.lock:
            if "." not in name and '"' not in name:
                found = [t for (_, n), t in self.tables.items() if n == name]
                if len(found) == 1:
                    return found[0]
            schema, bare = wire.parse_table(name)
            try:
                return self.tables[(schema, bare)]
            except KeyError:
                raise KeyError(f"no table {name!r}; known: {sorted('.'.join(k) for k in self.tables)}") from None

    def find_table(self, schema: str, name: str) -> Table | None:
        return self.tables.get((schema, name))

    def create_table(
        self, name: str, columns: Mapping[str, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], schema: str
    ) -> Table:
        with self.lock:
            if (schema, name) in self.tables:
                raise ValueError(f"table {schema}.{name} already exists")
            table = Table(schema, name, columns)
            for row in rows:
                full = table.full_row(row)
                if table.identity(full) in table.rows:
                    raise ValueError(f"duplicate key {dict(zip(table.pk, table.identity(full), strict=True))} in {name!r}")
                table.rows[table.identity(full)] = full
            self.tables[(schema, name)] = table
            return table

    # --- transactions ---

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        tx = Transaction(self)
        with self.lock:
            if self._in_transaction:
                raise RuntimeError("FakeElectric transactions do not nest")
            self._in_transaction = True
            try:
                yield tx
            except BaseException:
                tx._rollback()
                raise
            else:
                tx.lsn = self._commit(tx.changes)
                tx.txid = self.txid
            finally:
                self._in_transaction = False
        self.on_change()

    def _commit(self, changes: list[Change]) -> int:
        self.txid += 1  # as if the app asked pg_current_xact_id(), which assigns one
        if not changes:
            return self.lsn  # Postgres logs nothing for a transaction that changed nothing
        self.lsn_before = self.lsn
        self.lsn += self._rng.randint(64, 4096)
        append_transaction(self.shapes.values(), changes, self.txid, self.lsn)
        return self.lsn

    # --- shapes ---

    def shape(self, definition: ShapeDef) -> ShapeLog:
        """The current log for ``definition``, created (snapshot taken now) if there is none."""
        with self.lock:
            log = self.shapes.get(definition)
            if log is None:
                if self._in_transaction:
                    # The snapshot would see uncommitted rows that the log then repeats.
                    raise RuntimeError("a shape cannot be created while a transaction block is open")
                table = self.tables[(definition.schema, definition.table)]
                log = ShapeLog(
                    definition,
                    self._new_handle(definition),
                    table,
                    chunk_bytes=self.chunk_bytes,
                    snapshot_xid=self.txid + 1,
                    tables=resolver(self.find_table),
                )
                log.taken_at = self.lsn
                self.shapes[definition] = log
                self.by_handle[log.handle] = log
            return log

    def _new_handle(self, definition: ShapeDef) -> str:
        # "<phash2>-<unix µs>", made strictly increasing so a handle is never reissued.
        micros = max(int(self.clock() * 1_000_000), self._last_handle_us + 1)
        self._last_handle_us = micros
        return f"{definition.phash()}-{micros}"

    def expire(self, log: ShapeLog) -> None:
        with self.lock:
            log.expired = True
            if self.shapes.get(log.definition) is log:
                del self.shapes[log.definition]

    def rotate(self, name: str) -> None:
        with self.lock:
            table = self.table(name)
            for log in [log for log in self.shapes.values() if log.relation == [table.schema, table.name]]:
                self.expire(log)
        self.on_change()

    def truncate(self, name: str) -> None:
        with self.lock:
            self.table(name).rows.clear()
            self.rotate(name)

    def add_column(self, name: str, column: str, spec: Mapping[str, Any], default: str | None) -> None:
        with self.lock:
            table = self.table(name)
            if column in table.columns:
                raise ValueError(f"column {column!r} already exists in {table.name!r}")
            if "pk_index" in spec:
                raise ValueError("add_column cannot add a primary-key column")
            Table._check_spec(column, spec)
            table.columns[column] = dict(spec)
            table.refresh()
            value = table.canonical(column, default)
            rows = list(table.rows.values())
            table.rows.clear()
            for row in rows:  # re-key: a table without a PK identifies rows by every column
                row[column] = value
                table.rows[table.identity(row)] = row
            self.rotate(name)

    def drop_column(self, name: str, column: str) -> None:
        with self.lock:
            table = self.table(name)
            if column not in table.columns:
                raise KeyError(f"table {table.name!r} has no column {column!r}")
            if "pk_index" in table.columns[column] or len(table.columns) == 1:
                raise ValueError(f"cannot drop {column!r}: it is a primary-key column or the only column")
            del table.columns[column]
            table.refresh()
            rows = list(table.rows.values())
            table.rows.clear()
            for row in rows:
                del row[column]
                if table.identity(row) in table.rows:
                    raise ValueError(f"dropping {column!r} would make rows of {table.name!r} identical")
                table.rows[table.identity(row)] = row
            self.rotate(name)

    # --- the oracle ---

    def rows(
        self,
        name: str,
        where: str | None,
        params: Sequence[str] | Mapping[Any, str] | None,
        columns: Sequence[str] | str | None,
    ) -> dict[str, dict[str, str | None]]:
        with self.lock:
            table = self.table(name)
            if isinstance(params, Mapping):
                params = [params[k] for k in sorted(params, key=int)]
            if isinstance(columns, str):
                columns = parse_columns(columns)
            unknown = [c for c in columns or () if c not in table.columns]
            if unknown:
                raise KeyError(f"table {table.name!r} has no column(s) {unknown}")
            selected = None if columns is None else tuple(c for c in table.columns if c in set(columns))
            definition = ShapeDef(table.schema, table.name, where, tuple(params or ()), selected)
            predicate = definition.predicate(table, resolver(self.find_table))
            out: dict[str, dict[str, str | None]] = {}
            for row in table.rows.values():
                if predicate is None or predicate(row):
                    out[table.key(row)] = {c: table.snapshot_value(c, row[c]) for c in definition.selected(table)}
            return out
