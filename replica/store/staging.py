"""Positions and on-disk staging: where a shape stands (its published position and status), and
the snapshot or burst that has not reached up-to-date yet (R2, R3, R10).

``_replica_stages`` holds one row per local table being staged: the position to resume from and
whether publishing replaces every row. ``_replica_staging`` holds the changes themselves, raw as
received (operation, key, value JSON) in log order by ``seq``; they are converted at publish with
the schema of that moment. Nothing is held in Python memory between calls, and ``read`` streams
the rows back in bounded batches.

Used only by ``replica.store``, inside its transactions and its apsw-error boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from replica.protocol import snapshot as inserts
from replica.store import tables
from replica.protocol import wire
from replica.protocol.shapelog import Commit
from replica.typemap.schema import TableSchema, quote_ident
from replica.protocol.wire import Change

__all__ = [
    "Published",
    "ShapeStatus",
    "Stage",
    "append",
    "append_typed",
    "clear",
    "create_typed",
    "dump_schema",
    "is_redelivery",
    "load",
    "load_published",
    "load_schema",
    "read",
    "read_keys",
    "read_typed",
    "save",
    "statuses",
    "typed_state",
    "typed_table",
]

_READ_BATCH = 1000
_STAGE_BATCH = 5000


@dataclass(frozen=True)
class Stage:
    """A staging position: where the unfinished snapshot or burst stands, and what it will do."""

    definition: str
    handle: str | None
    offset: str
    cursor: str | None
    schema: Mapping[str, Any] | None
    refetch: bool
    changes: int = 0


@dataclass(frozen=True)
class Published:
    """The published position of a local table (a row of ``_replica_shapes``)."""

    definition: str | None
    handle: str | None
    offset: str | None
    cursor: str | None
    schema: Mapping[str, Any] | None
    rows: int

    def position(self) -> tuple[str | None, str | None, str | None]:
        return self.definition, self.handle, self.offset

    def continued_by(self, definition: str, handle: str | None) -> bool:
        """True if changes for (definition, handle) extend these rows rather than replace them."""
        return (
            self.offset is not None
            and self.definition == definition
            and (self.handle is None or handle is None or self.handle == handle)
        )


@dataclass(frozen=True)
class ShapeStatus:
    """One row of ``_replica_shapes``, for status displays. ``staged`` counts changes waiting on disk."""

    name: str
    definition: str | None
    handle: str | None
    offset: str | None
    rows: int
    last_synced_at: str | None
    state: str
    error: str | None
    staged: int = 0


def statuses(conn: apsw.Connection, name: str | None = None) -> list[ShapeStatus]:
    """Every shape's status (or just ``name``'s), sorted by name."""
    query = (
        'SELECT s."name", s."definition", s."handle", s."offset", s."rows", s."last_synced_at", '
        's."state", s."error", coalesce(g."changes", 0) FROM "_replica_shapes" AS s '
        'LEFT JOIN "_replica_stages" AS g ON g."name" = s."name"'
    )
    args: tuple[str, ...] = ()
    if name is not None:
        query += ' WHERE s."name" = ?'
        args = (name,)
    rows = conn.execute(query + ' ORDER BY s."name"', args).fetchall()
    return [ShapeStatus(*row) for row in rows]


def load_published(conn: apsw.Connection, name: str) -> Published | None:
    row = conn.execute(
        'SELECT "definition", "handle", "offset", "cursor", "schema", "rows" FROM "_replica_shapes" WHERE "name" = ?',
        (name,),
    ).fetchone()
    if row is None:
        return None
    definition, handle, offset, cursor, schema, rows = row
    return Published(definition, handle, offset, cursor, load_schema(schema), int(rows))


def dump_schema(schema: Mapping[str, Any] | None) -> str | None:
    # Key order is kept: it is the table's column order.
    return None if schema is None else json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def load_schema(text: str | None) -> Mapping[str, Any] | None:
    return None if text is None else json.loads(text)


def load(conn: apsw.Connection, name: str) -> Stage | None:
    row = conn.execute(
        'SELECT "definition", "handle", "offset", "cursor", "schema", "refetch", "changes" '
        'FROM "_replica_stages" WHERE "name" = ?',
        (name,),
    ).fetchone()
    if row is None:
        return None
    definition, handle, offset, cursor, schema, refetch, changes = row
    return Stage(definition, handle, offset, cursor, load_schema(schema), bool(refetch), int(changes))


def save(conn: apsw.Connection, name: str, stage: Stage) -> None:
    conn.execute(
        'INSERT OR REPLACE INTO "_replica_stages" '
        '("name", "definition", "handle", "offset", "cursor", "schema", "refetch", "changes") '
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            name,
            stage.definition,
            stage.handle,
            stage.offset,
            stage.cursor,
            dump_schema(stage.schema),
            int(stage.refetch),
            stage.changes,
        ),
    )


def append(conn: apsw.Connection, name: str, changes: Iterable[Change]) -> int:
    """Stage changes after those already staged; returns how many were added."""
    rows = [
        (name, change.operation, change.key, json.dumps(change.value, ensure_ascii=False, separators=(",", ":")))
        for change in changes
    ]
    if rows:
        # seq is the rowid: each new row gets max(seq) + 1, so log order is insertion order.
        conn.executemany(
            'INSERT INTO "_replica_staging" ("name", "operation", "key", "value") VALUES (?, ?, ?, ?)', rows
        )
    return len(rows)


def read(conn: apsw.Connection, name: str) -> Iterator[tuple[str, str, dict[str, str | None]]]:
    """Staged (operation, key, value) in log order, fetched in batches (no statement stays open)."""
    after = 0
    while True:
        batch = conn.execute(
            'SELECT "seq", "operation", "key", "value" FROM "_replica_staging" '
            'WHERE "name" = ? AND "seq" > ? ORDER BY "seq" LIMIT ?',
            (name, after, _READ_BATCH),
        ).fetchall()
        if not batch:
            return
        for _seq, operation, key, value in batch:
            yield operation, key, json.loads(value)
        after = batch[-1][0]


def clear(conn: apsw.Connection, name: str) -> None:
    conn.execute('DELETE FROM "_replica_staging" WHERE "name" = ?', (name,))
    conn.execute('DELETE FROM "_replica_stages" WHERE "name" = ?', (name,))
    conn.execute(f"DROP TABLE IF EXISTS main.{typed_table(name)}")
    conn.execute(f"DROP TABLE IF EXISTS main.{quote_ident(shadow_name(name))}")


def shadow_name(name: str) -> str:
    """Where a table's first snapshot is staged, in the table's own layout (replica.shadow)."""
    return "_replica_new_" + name


# --- typed staging: rows converted once, on arrival, into a per-table staging table ---
#
# ``_replica_rows_<name>`` holds the staged changes already converted by the type map, one
# untyped column per schema column (no affinity: values stay exactly as bound), in log order by
# ``seq``. Row 0 records the layout (schema + overrides) they were converted with, and whether
# every staged change is a whole-row insert (then publishing is one INSERT … SELECT).
# ``present`` is NULL for a whole row in schema order, else the indexes of the columns sent.

_OPS = {wire.INSERT: 0, wire.UPDATE: 1, wire.DELETE: 2}
OPERATION_NAMES = (wire.INSERT, wire.UPDATE, wire.DELETE)


def typed_table(name: str) -> str:
    return quote_ident("_replica_rows_" + name)


def layout(schema: TableSchema) -> str:
    return json.dumps([[c.name, c.type, c.dims, c.override] for c in schema.columns], separators=(",", ":"))


def typed_state(conn: apsw.Connection, name: str) -> tuple[str, bool] | None:
    """(layout, simple) of the typed staging table of ``name``, or None when it has none."""
    exists = conn.execute(
        "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?", ("_replica_rows_" + name,)
    ).fetchone()
    if exists is None:
        return None
    row = conn.execute(f'SELECT "key", "present" FROM main.{typed_table(name)} WHERE "seq" = 0').fetchone()
    return (str(row[0]), row[1] == "simple") if row is not None else ("", False)


def create_typed(conn: apsw.Connection, name: str, schema: TableSchema) -> None:
    table = typed_table(name)
    columns = "".join(f', "c{i}"' for i in range(len(schema.names)))
    conn.execute(f"DROP TABLE IF EXISTS main.{table}")
    conn.execute(
        f'CREATE TABLE main.{table} ("seq" INTEGER PRIMARY KEY, "op" INTEGER NOT NULL, "key" TEXT, "present" TEXT'
        f"{columns})"
    )
    conn.execute(f'INSERT INTO main.{table} ("seq", "op", "key", "present") VALUES (0, -1, ?, ?)',
                 (layout(schema), "simple"))


def append_typed(
    conn: apsw.Connection, name: str, changes: Sequence[Change], schema: TableSchema, *, keys: bool = True
) -> int:
    """Convert ``changes`` (ProtocolError names a bad value) and stage them after those staged.

    An ``inserts.BodyChanges`` (only whole-row inserts) is read and converted by SQLite from its
    body (``_append_bulk``); other changes, or if that fails, by Python. ``keys`` False: the
    message keys are not needed (a refetch reports none) and SQLite need not copy them.
    """
    if isinstance(changes, inserts.BodyChanges) and _append_bulk(conn, name, changes, schema, keys):
        return len(changes)
    names = schema.names
    width = len(names)
    index = {column: i for i, column in enumerate(names)}
    params: list[tuple[Any, ...]] = []
    simple = True
    start = 0
    while start < len(changes):
        if len(params) >= _STAGE_BATCH:
            _insert_typed(conn, name, width, params)
            params = []
        end = start
        limit = min(len(changes), start + _STAGE_BATCH)  # bounds the converted copies held at once
        while end < limit and changes[end].operation == wire.INSERT and len(changes[end].value) == width:
            end += 1
        if end > start:  # a run of whole-row inserts: converted column by column
            run = changes[start:end]
            rows = schema.convert_full_rows([c.value for c in run])
            schema.check_keys(rows)
            params.extend((0, c.key, None, *row) for c, row in zip(run, rows, strict=True))
            start = end
            continue
        change = changes[start]
        row = schema.convert_row(change.value)
        present = None if len(row) == width else ",".join(str(index[c]) for c in row)
        params.append((_OPS[change.operation], change.key, present, *(row.get(c) for c in names)))
        simple = simple and change.operation == wire.INSERT and present is None
        start += 1
    _insert_typed(conn, name, width, params)
    if not simple:
        conn.execute(f'UPDATE main.{typed_table(name)} SET "present" = NULL WHERE "seq" = 0')
    return len(changes)


def _append_bulk(
    conn: apsw.Connection, name: str, changes: inserts.BodyChanges, schema: TableSchema, keys: bool
) -> bool:
    table = typed_table(name)
    columns = "".join(f', "c{i}"' for i in range(len(schema.names)))
    insert = f'INSERT INTO main.{table} ("op", "key"{columns}) '
    return tables.bulk_write(conn, changes, schema, lambda select: insert + select,
                             key="0, s.k, " if keys else "0, NULL, ")


def _insert_typed(conn: apsw.Connection, name: str, width: int, params: list[tuple[Any, ...]]) -> None:
    if params:
        marks = ", ".join("?" for _ in range(width + 3))
        columns = "".join(f', "c{i}"' for i in range(width))
        conn.executemany(f'INSERT INTO main.{typed_table(name)} ("op", "key", "present"{columns}) VALUES ({marks})', params)


def read_keys(conn: apsw.Connection, name: str) -> Iterator[str]:
    """The keys of the typed staged changes in log order, in batches."""
    after = 0
    while True:
        batch = conn.execute(
            f'SELECT "seq", "key" FROM main.{typed_table(name)} WHERE "seq" > ? ORDER BY "seq" LIMIT ?',
            (after, _READ_BATCH * 10),
        ).fetchall()
        if not batch:
            return
        for _seq, key in batch:
            yield key
        after = batch[-1][0]


def read_typed(
    conn: apsw.Connection, name: str, names: tuple[str, ...]
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Typed staged (operation, key, converted value) in log order, in batches."""
    table = typed_table(name)
    after = 0
    while True:
        batch = conn.execute(
            f'SELECT * FROM main.{table} WHERE "seq" > ? ORDER BY "seq" LIMIT ?', (after, _READ_BATCH)
        ).fetchall()
        if not batch:
            return
        for seq, op, key, present, *values in batch:
            if present is None:
                yield OPERATION_NAMES[op], key, dict(zip(names, values, strict=True))
            else:
                chosen = [int(i) for i in present.split(",")] if present else []
                yield OPERATION_NAMES[op], key, {names[i]: values[i] for i in chosen}
            after = seq


def is_redelivery(
    commit: Commit, stage: Stage | None, published: tuple[str | None, str | None, str | None] | None
) -> bool:
    """True if ``commit`` repeats a position already stored for the same definition and handle (R3).

    ``published`` is (definition, handle, offset) of the published position, if any. Positions
    within one handle are immutable, so an older commit carries nothing new.
    """
    if commit.refetch:
        return False
    if stage is not None:
        position: tuple[str | None, str | None, str | None] = (stage.definition, stage.handle, stage.offset)
    elif published is not None and published[2] is not None:
        position = published
    else:
        return False
    definition, handle, offset = position
    if definition != commit.shape.definition() or handle is None or handle != commit.checkpoint.handle:
        return False
    try:
        new, old = wire.Offset.parse(commit.checkpoint.offset), wire.Offset.parse(offset or "")
    except ValueError:
        return False
    # Two staging steps never share an offset (the server advances, or the protocol refuses), so
    # an equal one is a redelivery; an equal publish may carry a new cursor and is applied again.
    return new < old or (new == old and stage is not None and not commit.up_to_date)
