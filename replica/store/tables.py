"""Synced tables: create or rebuild one from a ``TableSchema``, and write changes into it.

Used only by ``replica.store``, inside its transactions and its apsw-error boundary: nothing here
commits, and apsw errors propagate to the store, which translates them. Bodies of whole-row
inserts may instead be written by SQLite itself (``replica.fast.write_inserts``).

Apply semantics (Electric's key-map model, redelivery-safe, R3):
  insert  upsert: ``INSERT … ON CONFLICT(pk) DO UPDATE`` the columns present
  update  merge the columns present into the row; a value carrying every column is an upsert
          (replica=full), anything less on a missing row is a no-op
  delete  by primary key; a missing row is a no-op
A table without a primary key is identified by all its columns compared with ``IS`` (NULL-safe),
so every message carries the whole row; at most one local row exists per identity, as in
Electric's key map.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from replica.errors import ProtocolError, ShapeError
from replica.protocol import wire
from replica.protocol.messages import Change, Move
from replica.typemap.schema import (
    SQLValue,
    TableSchema,
    create_table_sql,
    identity_index_sql,
    quote_ident,
)

__all__ = ["TableWriter", "Tally", "ensure_table", "plain_rows", "probes", "signature", "table_exists"]

_BATCH = 500  # statements per executemany: long enough to amortise, short enough to bound memory
_BULK = 5000  # whole-row inserts converted and written per batch
_CARRY = "_replica_carry"


@dataclass
class Tally:
    """What a publish did: message counts per operation, and their keys unless ``keep_keys`` is off."""

    keep_keys: bool = True
    counts: dict[str, int] = field(default_factory=lambda: {wire.INSERT: 0, wire.UPDATE: 0, wire.DELETE: 0})
    keys: dict[str, list[str]] = field(default_factory=lambda: {wire.INSERT: [], wire.UPDATE: [], wire.DELETE: []})

    def add(self, operation: str, key: str) -> None:
        self.counts[operation] += 1
        if self.keep_keys:
            self.keys[operation].append(key)


def plain_rows(changes: Iterable[Change | Move]) -> Iterator[tuple[str, str, Mapping[str, str | None]]]:
    """The (operation, key, value) of each change, for ``TableWriter.apply``; move events (which a
    plain shape never gets) are passed over, as before subquery shapes were known."""
    return ((c.operation, c.key, c.value) for c in changes if isinstance(c, Change))


def table_exists(conn: apsw.Connection, name: str) -> bool:
    kind = _object_type(conn, name)
    if kind not in (None, "table"):
        raise ShapeError(f"cannot sync into {name!r}: a {kind} with that name exists; give the shape another name")
    return kind == "table"


def _object_type(conn: apsw.Connection, name: str) -> str | None:
    row = conn.execute("SELECT type FROM main.sqlite_schema WHERE name = ? COLLATE NOCASE LIMIT 1", (name,)).fetchone()
    return None if row is None else str(row[0])


def ensure_table(conn: apsw.Connection, name: str, schema: TableSchema, *, keep_rows: bool) -> list[tuple[str, str]]:
    """Make ``name`` have exactly the schema's columns; return the user objects to recreate.

    Unchanged tables are left alone (their indexes and triggers with them). A changed one is
    rebuilt: ``keep_rows`` carries the rows' common columns over (a refetch replaces them anyway).
    Dropping the old table drops the user's indexes and triggers on it: their (name, SQL) are
    returned for the store to recreate, each checked with ``probes`` (one may no longer apply).
    """
    if not table_exists(conn, name):
        _create(conn, name, schema)
        return []
    current = signature(conn, name)
    if current == schema.signature():
        index = identity_index_sql(name, schema)
        if index is not None:
            conn.execute(index)
        return []
    saved = conn.execute(
        "SELECT name, sql FROM main.sqlite_schema WHERE tbl_name = ? COLLATE NOCASE "
        "AND type IN ('index', 'trigger') AND sql IS NOT NULL AND name NOT LIKE '\\_replica%' ESCAPE '\\' "
        "ORDER BY type = 'trigger', rowid",
        (name,),
    ).fetchall()
    old_names = {col for col, _decl, _pk in current}
    common = [c for c in schema.names if c in old_names]
    carry = keep_rows and bool(common)
    columns = ", ".join(quote_ident(c) for c in common)
    if carry:
        conn.execute(f"DROP TABLE IF EXISTS temp.{_CARRY}")
        conn.execute(f"CREATE TEMP TABLE {_CARRY} AS SELECT {columns} FROM main.{quote_ident(name)}")
    # DROP + CREATE rather than CREATE + RENAME: a rename rewrites (or refuses on) views that
    # name the table, while views simply see the new table under the same name.
    conn.execute(f"DROP TABLE main.{quote_ident(name)}")
    _create(conn, name, schema)
    if carry:
        conn.execute(f"INSERT OR IGNORE INTO main.{quote_ident(name)} ({columns}) SELECT {columns} FROM temp.{_CARRY}")
        conn.execute(f"DROP TABLE temp.{_CARRY}")
    return [(str(obj_name), str(sql)) for obj_name, sql in saved]


def signature(conn: apsw.Connection, name: str) -> list[tuple[str, str, int]]:
    """(column, declared type, PK position) of table ``name``, comparable with ``TableSchema.signature``."""
    rows = conn.execute(f"PRAGMA main.table_info({quote_ident(name)})")
    return [(str(col), str(decl), int(pk)) for _cid, col, decl, _notnull, _default, pk in rows]


def _create(conn: apsw.Connection, name: str, schema: TableSchema) -> None:
    conn.execute(create_table_sql(name, schema))
    index = identity_index_sql(name, schema)
    if index is not None:
        conn.execute(index)


def probes(name: str, schema: TableSchema) -> list[str]:
    """Statements whose preparation compiles every trigger on the table.

    Trigger bodies compile only when a statement that fires them is prepared, so a trigger that
    names a dropped column is only found by preparing one of each (EXPLAIN: nothing runs).
    """
    table = quote_ident(name)
    assignments = ", ".join(f"{quote_ident(c)} = {quote_ident(c)}" for c in schema.names)
    return [
        f"EXPLAIN INSERT INTO main.{table} DEFAULT VALUES",
        f"EXPLAIN UPDATE main.{table} SET {assignments}",
        f"EXPLAIN DELETE FROM main.{table}",
    ]


class TableWriter:
    """Writes changes into one synced table, grouping runs of identical statements for executemany."""

    def __init__(self, conn: apsw.Connection, name: str, schema: TableSchema) -> None:
        self._conn = conn
        self._table = "main." + quote_ident(name)
        self._schema = schema
        self._names = schema.names
        self._all = frozenset(schema.names)
        self._pk = schema.pk
        self._pk_set = frozenset(schema.pk)
        self._sql: dict[tuple[str, tuple[str, ...]], str] = {}
        self._run_sql: str | None = None
        self._run: list[Sequence[SQLValue]] = []

    def apply(self, changes: Iterable[tuple[str, str, Mapping[str, str | None]]], tally: Tally) -> None:
        """Apply (operation, key, value) triples in order; call ``flush`` before reading the table.

        Runs of whole-row inserts into a keyed table are converted column by column.
        """
        width = len(self._names)
        bulk = self._schema.keyed
        values: list[Mapping[str, Any]] = []
        keys: list[str] = []
        for operation, key, value in changes:
            if bulk and operation == wire.INSERT and len(value) == width:
                values.append(value)
                keys.append(key)
                if len(values) >= _BULK:
                    self._insert_rows(values, keys, tally)
                    values, keys = [], []
                continue
            if values:
                self._insert_rows(values, keys, tally)
                values, keys = [], []
            tally.add(operation, key)
            row = self._schema.convert_row(value)
            statement = self._statement(operation, row)
            if statement is not None:
                self._queue(*statement)
        if values:
            self._insert_rows(values, keys, tally)

    def _insert_rows(self, values: list[Mapping[str, Any]], keys: list[str], tally: Tally) -> None:
        rows = self._schema.convert_full_rows(values)
        self._schema.check_keys(rows)
        for key in keys:
            tally.add(wire.INSERT, key)
        self.flush()
        self._conn.executemany(self._cached("upsert", self._names, self._upsert_sql), rows)

    def upsert_from(self, select: str) -> str:
        """The upsert of every row ``select`` yields (whole rows in schema order).

        ``select`` must end in a WHERE clause (or ORDER BY): without one, SQLite would read the
        ON CONFLICT that follows as a join constraint.
        """
        head, tail = self._upsert_sql(self._names).split(" VALUES ", 1)
        return f"{head} {select} ON CONFLICT {tail.split(' ON CONFLICT ', 1)[1]}"

    def flush(self) -> None:
        if self._run:
            assert self._run_sql is not None
            self._conn.executemany(self._run_sql, self._run)
            self._run = []

    def _queue(self, sql: str, params: Sequence[SQLValue]) -> None:
        if sql != self._run_sql or len(self._run) >= _BATCH:
            self.flush()
            self._run_sql = sql
        self._run.append(params)

    def _statement(self, operation: str, row: dict[str, SQLValue]) -> tuple[str, Sequence[SQLValue]] | None:
        present = tuple(row)  # the SQL is cached per column set, in the order the server sent them
        if not self._schema.keyed:
            return self._identity_statement(operation, row, present)
        pk_values = [row.get(c) for c in self._pk]
        if None in pk_values:
            raise ProtocolError(f"{operation} message lacks primary-key column(s) {list(self._pk)}")
        if operation == wire.DELETE:
            return self._cached("delete", (), self._delete_sql), pk_values
        if operation == wire.UPDATE and len(present) < len(self._all):
            changed = tuple(c for c in present if c not in self._pk_set)
            if not changed:
                return None  # nothing to merge
            sql = self._cached("update", changed, self._update_sql)
            return sql, [row[c] for c in changed] + pk_values
        # insert, or an update that carries the whole row: upsert
        return self._cached("upsert", present, self._upsert_sql), list(row.values())

    def _identity_statement(
        self, operation: str, row: dict[str, SQLValue], present: tuple[str, ...]
    ) -> tuple[str, Sequence[SQLValue]] | None:
        if len(present) < len(self._all):
            if operation == wire.UPDATE:
                return None  # without every column the row cannot be identified
            raise ProtocolError(
                f"{operation} message for a table without a primary key must carry every column "
                f"(its identity), missing {sorted(self._all - set(present))}"
            )
        identity = [row[c] for c in self._pk]
        if operation == wire.DELETE:
            return self._cached("delete", (), self._delete_sql), identity
        values = [row[c] for c in self._names]
        return self._cached("upsert", (), self._identity_insert_sql), values + identity

    def _cached(self, kind: str, columns: tuple[str, ...], build: Any) -> str:
        sql = self._sql.get((kind, columns))
        if sql is None:
            sql = self._sql[(kind, columns)] = build(columns)
        return sql

    def _match(self) -> str:
        operator = "=" if self._schema.keyed else "IS"
        return " AND ".join(f"{quote_ident(c)} {operator} ?" for c in self._pk)

    def _upsert_sql(self, columns: tuple[str, ...]) -> str:
        names = ", ".join(quote_ident(c) for c in columns)
        marks = ", ".join("?" for _ in columns)
        target = ", ".join(quote_ident(c) for c in self._pk)
        rest = [c for c in columns if c not in self._pk]
        action = (
            "DO UPDATE SET " + ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in rest)
            if rest
            else "DO NOTHING"
        )
        return f"INSERT INTO {self._table} ({names}) VALUES ({marks}) ON CONFLICT ({target}) {action}"

    def _update_sql(self, columns: tuple[str, ...]) -> str:
        sets = ", ".join(f"{quote_ident(c)} = ?" for c in columns)
        return f"UPDATE {self._table} SET {sets} WHERE {self._match()}"

    def _delete_sql(self, _columns: tuple[str, ...]) -> str:
        return f"DELETE FROM {self._table} WHERE {self._match()}"

    def _identity_insert_sql(self, _columns: tuple[str, ...]) -> str:
        names = ", ".join(quote_ident(c) for c in self._names)
        marks = ", ".join("?" for _ in self._names)
        return (
            f"INSERT INTO {self._table} ({names}) SELECT {marks} "
            f"WHERE NOT EXISTS (SELECT 1 FROM {self._table} WHERE {self._match()})"
        )
