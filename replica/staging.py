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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import apsw

from replica import wire
from replica.protocol import Commit
from replica.wire import Change

__all__ = [
    "Published",
    "ShapeStatus",
    "Stage",
    "append",
    "clear",
    "dump_schema",
    "is_redelivery",
    "load",
    "load_published",
    "load_schema",
    "read",
    "save",
    "statuses",
]

_READ_BATCH = 1000


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
