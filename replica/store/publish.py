"""Publishing at up-to-date: staged and new changes into the synced table, with its position (R1, R2).

``publish`` is the body of the store's up-to-date transaction: it creates or rebuilds the table
from the schema (recreating the user's indexes and triggers that still apply), replaces every row
on a refetch, writes the staged changes and the commit's own in log order, clears the stage, and
records the new position in ``_replica_shapes``. ``Applied`` reports what it did.

Used only by ``replica.store``, inside its transactions and its apsw-error boundary: nothing here
commits. apsw errors propagate to the store, except the two it classifies itself: a schema SQLite
refuses as a table (``ShapeError``) and a saved index or trigger that no longer applies (dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import apsw

from replica.protocol import snapshot as inserts
from replica.store import shadow
from replica.store import staging
from replica.store import tables
from replica.protocol import wire
from replica.errors import ProtocolError, ShapeError, StoreError
from replica.protocol.shapelog import Commit
from replica.typemap.schema import TableSchema, quote_ident

__all__ = ["Applied", "publish"]

log = logging.getLogger("replica.store.store")  # the store's channel: this is the body of Store.apply


@dataclass(frozen=True)
class Applied:
    """What one ``Store.apply`` did to the local table ``name``.

    ``inserted``/``updated``/``deleted`` count the change messages written to the table, and
    ``keys`` maps each operation to their message keys — except for a refetch (``refetch`` True:
    every row was replaced), where ``keys`` stays empty so memory does not grow with the shape;
    for a table's first snapshot (it did not exist), ``inserted`` is its row count.
    ``published`` is False when the changes were only staged (``staged`` counts what waits on
    disk) or the commit was a redelivery of an older position. ``rows`` is the table's row count
    after the call. ``dropped`` names user indexes/triggers that no longer applied after a schema
    change and were dropped.
    """

    name: str
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rows: int = 0
    refetch: bool = False
    published: bool = False
    staged: int = 0
    dropped: tuple[str, ...] = ()


def publish(
    conn: apsw.Connection,
    commit: Commit,
    published: staging.Published | None,
    stage: staging.Stage | None,
    overrides: Mapping[str, str] | None = None,
) -> Applied:
    """Publish ``commit`` (up-to-date, not a redelivery) on top of ``published`` and ``stage``.

    ``stage`` is the one this commit continues (the store discards any other first);
    ``overrides`` are the table's per-column type overrides.
    """
    name, definition, checkpoint = commit.shape.local_name, commit.shape.definition(), commit.checkpoint
    continues = published is not None and published.continued_by(definition, checkpoint.handle)
    refetch = commit.refetch or (stage.refetch if stage is not None else not continues)
    raw_schema = (
        checkpoint.schema
        or (stage.schema if stage is not None else None)
        or (published.schema if published is not None and continues else None)
    )
    if raw_schema is None:
        raise ProtocolError(f"no electric-schema known for shape {name!r}: cannot create its table")
    table_schema = TableSchema.from_electric(raw_schema, overrides)
    exists = tables.table_exists(conn, name)
    if exists and (published is None or published.definition is None):
        raise ShapeError(
            f"table {name!r} already exists and was not created by replica; "
            "give the shape another name, or drop the table"
        )
    if not exists and not refetch:
        raise StoreError(f"table {name!r} disappeared (dropped outside replica?); it will be synced again")
    if stage is not None and shadow.exists(conn, name):
        return _publish_shadow(conn, commit, table_schema, raw_schema, exists)
    try:
        saved = tables.ensure_table(conn, name, table_schema, keep_rows=not refetch)
    except apsw.SQLError as exc:
        raise ShapeError(f"cannot create table {name!r} from electric-schema: {exc}") from exc
    checks = tables.probes(name, table_schema)
    dropped = [item for item, sql in saved if not _recreate(conn, sql, checks)]
    for item in dropped:
        log.warning("table %r changed: dropped index/trigger %r, which no longer applies", name, item)
    if refetch:
        conn.execute(f"DELETE FROM main.{quote_ident(name)}")  # keeps the user's indexes and triggers
    tally = tables.Tally(keep_keys=not refetch)
    writer = tables.TableWriter(conn, name, table_schema)
    changes = commit.changes
    if stage is not None:
        typed = staging.typed_state(conn, name)
        simple = typed is not None and typed[1] and typed[0] == staging.layout(table_schema)
        if isinstance(changes, inserts.BodyChanges) and simple:
            # The last response of a snapshot joins its stage, so it is copied in SQL with the rest.
            staging.append_typed(conn, name, changes, table_schema, keys=not refetch)
            typed, changes = staging.typed_state(conn, name), ()
        if typed is None:
            writer.apply(staging.read(conn, name), tally)  # a raw stage: converted now
        elif typed[0] != staging.layout(table_schema):
            raise StoreError(
                f"the rows staged for {name!r} were converted with other column types or overrides; "
                "the snapshot is fetched again"
            )
        elif typed[1] and table_schema.keyed:
            writer.copy_inserts(staging.typed_table(name), tally, keys=staging.read_keys(conn, name))
        else:
            writer.apply(staging.read_typed(conn, name, table_schema.names), tally, converted=True)
    writer.apply(((c.operation, c.key, c.value) for c in changes), tally)
    writer.flush()
    staging.clear(conn, name)
    rows = int(conn.execute(f"SELECT count(*) FROM main.{quote_ident(name)}").fetchone()[0])
    _record(conn, commit, raw_schema, rows)
    return Applied(
        name,
        inserted=tally.counts[wire.INSERT],
        updated=tally.counts[wire.UPDATE],
        deleted=tally.counts[wire.DELETE],
        keys={op: tuple(keys) for op, keys in tally.keys.items()} if not refetch else {},
        rows=rows,
        refetch=refetch,
        published=True,
        dropped=tuple(dropped),
    )


def _publish_shadow(
    conn: apsw.Connection, commit: Commit, table_schema: TableSchema, raw_schema: Mapping[str, Any], exists: bool
) -> Applied:
    """A first snapshot: its last changes join the shadow, which becomes the table (replica.shadow)."""
    name = commit.shape.local_name
    if exists or not shadow.matches(conn, name, table_schema):
        raise StoreError(f"the snapshot staged for {name!r} no longer fits its table; it is fetched again")
    shadow.append(conn, name, commit.changes, table_schema)
    shadow.swap_in(conn, name, table_schema)
    staging.clear(conn, name)
    rows = int(conn.execute(f"SELECT count(*) FROM main.{quote_ident(name)}").fetchone()[0])
    _record(conn, commit, raw_schema, rows)
    # The table is new: every row in it was inserted (per-message counts are not kept for a shadow).
    return Applied(name, inserted=rows, rows=rows, refetch=True, published=True)


def _record(conn: apsw.Connection, commit: Commit, raw_schema: Mapping[str, Any], rows: int) -> None:
    """Write the published position (and row count, sync time) to ``_replica_shapes``.

    A publish proves the shape works, so it also marks it live and clears a stored error.
    """
    checkpoint = commit.checkpoint
    conn.execute(
        'INSERT INTO "_replica_shapes" ("name", "definition", "handle", "offset", "cursor", "schema", '
        '"rows", "last_synced_at", "state", "error") VALUES (?, ?, ?, ?, ?, ?, ?, ?, \'live\', NULL) '
        'ON CONFLICT ("name") DO UPDATE SET '
        '"definition" = excluded."definition", "handle" = excluded."handle", "offset" = excluded."offset", '
        '"cursor" = excluded."cursor", "schema" = excluded."schema", "rows" = excluded."rows", '
        '"last_synced_at" = excluded."last_synced_at", "state" = \'live\', "error" = NULL',
        (
            commit.shape.local_name,
            commit.shape.definition(),
            checkpoint.handle,
            checkpoint.offset,
            checkpoint.cursor,
            staging.dump_schema(raw_schema),
            rows,
            datetime.now(UTC).isoformat(timespec="milliseconds"),
        ),
    )


def _recreate(conn: apsw.Connection, sql: str, checks: list[str]) -> bool:
    """Run a user's saved CREATE INDEX/TRIGGER; False (leaving nothing) if it no longer applies."""
    conn.execute("SAVEPOINT _replica_recreate")
    try:
        conn.execute(sql)
        for check in checks:
            conn.execute(check, can_cache=False).fetchall()  # EXPLAIN never rechecks a cached plan
    except apsw.SQLError:
        conn.execute("ROLLBACK TO _replica_recreate")
        return False
    finally:
        conn.execute("RELEASE _replica_recreate")
    return True
