"""Publishing at up-to-date: staged and new changes into the synced table, with its position (R1, R2).

``publish`` is the body of the store's up-to-date transaction. A snapshot (refetch) takes the
commit's own changes into its staged table and replaces the table's rows with it
(``snapshots``); a burst creates or rebuilds the table from the schema if needed (recreating the
user's indexes and triggers that still apply) and writes the staged changes and the commit's own
in log order (``changelog``). Either way the stage is cleared and the new position recorded in
``_replica_shapes``. ``Applied`` reports what it did.

Used only by ``replica.store``, inside its transactions and its apsw-error boundary: nothing here
commits. apsw errors propagate to the store, except the two it classifies itself: a schema SQLite
refuses as a table (``ShapeError``) and a saved index or trigger that no longer applies (dropped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import apsw

from replica import fast
from replica.errors import ProtocolError, ShapeError, StoreError
from replica.protocol import wire
from replica.protocol.shapelog import Commit
from replica.protocol.snapshot import InsertBody
from replica.status import iso_time
from replica.store import changelog, positions, snapshots, tables
from replica.typemap.schema import TableSchema, quote_ident

__all__ = ["Applied", "publish"]

log = logging.getLogger("replica.store")  # the store's channel: this is the body of Store.apply


@dataclass(frozen=True)
class Applied:
    """What one ``Store.apply`` did to the local table ``name``.

    ``inserted``/``updated``/``deleted`` count the change messages written to the table, and
    ``keys`` maps each operation to their message keys — except for a refetch (``refetch`` True:
    every row was replaced by a new snapshot), where ``inserted`` is the new row count and
    ``keys`` stays empty, so memory does not grow with the shape. ``published`` is False when the
    changes were only staged (``staged`` counts what waits on disk) or the commit was a
    redelivery of an older position. ``rows`` is the table's row count after the call.
    ``dropped`` names user indexes/triggers that no longer applied after a schema change.
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
    published: positions.Published | None,
    stage: positions.Stage | None,
    attached: fast.Attached | None = None,
) -> Applied:
    """Publish ``commit`` (up-to-date, not a redelivery) on top of ``published`` and ``stage``.

    ``stage`` is the one this commit continues (the store discards any other first);
    ``attached``: rows of the commit's own body converted ahead.
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
    table = commit.table if commit.table is not None else TableSchema.from_electric(raw_schema, commit.shape.overrides)
    exists = tables.table_exists(conn, name)
    if exists and (published is None or published.definition is None):
        raise ShapeError(
            f"table {name!r} already exists and was not created by replica; "
            "give the shape another name, or drop the table"
        )
    if not exists and not refetch:
        raise StoreError(f"table {name!r} disappeared (dropped outside replica?); it will be synced again")
    if refetch:
        return _publish_snapshot(conn, commit, table, raw_schema, exists, attached)
    dropped = _ensure(conn, name, table, keep_rows=True)
    tally = tables.Tally()
    writer = tables.TableWriter(conn, name, table)
    if stage is not None:
        writer.apply(changelog.read(conn, name), tally)
    changes = commit.changes.changes() if isinstance(commit.changes, InsertBody) else commit.changes
    writer.apply(((c.operation, c.key, c.value) for c in changes), tally)
    writer.flush()
    changelog.clear(conn, name)
    rows = _count(conn, name)
    _record(conn, commit, raw_schema, rows)
    return Applied(
        name,
        inserted=tally.counts[wire.INSERT],
        updated=tally.counts[wire.UPDATE],
        deleted=tally.counts[wire.DELETE],
        keys={op: tuple(keys) for op, keys in tally.keys.items()},
        rows=rows,
        published=True,
        dropped=tuple(dropped),
    )


def _publish_snapshot(
    conn: apsw.Connection,
    commit: Commit,
    table: TableSchema,
    raw_schema: Mapping[str, Any],
    exists: bool,
    attached: fast.Attached | None,
) -> Applied:
    """The snapshot's last changes join it, and it replaces every row of the table."""
    name = commit.shape.local_name
    if not snapshots.exists(conn, name):
        snapshots.create(conn, name, table)  # a snapshot whose first response is also its last
    elif not snapshots.matches(conn, name, table):
        raise StoreError(f"the snapshot staged for {name!r} has other columns now; it is fetched again")
    snapshots.append(conn, name, commit.changes, table, attached)
    dropped: list[str] = []
    if exists:
        dropped = _ensure(conn, name, table, keep_rows=False)
    snapshots.publish(conn, name, table, replace=exists)
    changelog.clear(conn, name)
    rows = _count(conn, name)
    _record(conn, commit, raw_schema, rows)
    return Applied(name, inserted=rows, rows=rows, refetch=True, published=True, dropped=tuple(dropped))


def _ensure(conn: apsw.Connection, name: str, table: TableSchema, *, keep_rows: bool) -> list[str]:
    """Give ``name`` the schema's layout; the names of user indexes/triggers that no longer apply."""
    try:
        saved = tables.ensure_table(conn, name, table, keep_rows=keep_rows)
    except apsw.SQLError as exc:
        raise ShapeError(f"cannot create table {name!r} from electric-schema: {exc}") from exc
    checks = tables.probes(name, table)
    dropped = [item for item, sql in saved if not _recreate(conn, sql, checks)]
    for item in dropped:
        log.warning("table %r changed: dropped index/trigger %r, which no longer applies", name, item)
    return dropped


def _count(conn: apsw.Connection, name: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM main.{quote_ident(name)}").fetchone()[0])  # type: ignore[index]


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
            positions.dump_schema(raw_schema),
            rows,
            iso_time(time.time()),
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
