"""Publishing: staged and new changes into the synced table, with its position, in one transaction (R1, R2).

``publish`` is the body of the store's up-to-date transaction for one shape; ``publish_stage`` that of
a consistency group's, per member, up to the group's LSN. A snapshot (refetch) replaces the table's
rows with its staged table (``snapshots``); a burst creates or rebuilds the table from the schema if
needed (recreating the user's indexes and triggers that still apply) and writes the staged changes
(``changelog``) and the commit's own in log order. The published txids and the snapshot's visibility
are recorded (``txlog``), and the new position in ``_replica_shapes``. ``Applied`` reports it.

Used only by ``replica.store``, inside its transactions and its apsw-error boundary: nothing here
commits. apsw errors propagate to the store, except the two it classifies itself: a schema SQLite
refuses as a table (``ShapeError``) and a saved index or trigger that no longer applies (dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import apsw

from replica import fast
from replica.errors import ProtocolError, ShapeError, StoreError
from replica.protocol import wire
from replica.protocol.shape import Shape
from replica.protocol.shapelog import Changes, Commit
from replica.protocol.snapshot import InsertBody
from replica.protocol.txids import Visibility
from replica.status import iso_time
from replica.store import changelog, outbox, overlay, positions, snapshots, tables, tags, txlog
from replica.typemap.schema import TableSchema, quote_ident

__all__ = ["Applied", "publish", "publish_stage"]

log = logging.getLogger("replica.store")  # the store's channel: this is the body of Store.apply


@dataclass(frozen=True)
class Applied:
    """What one ``Store.apply`` (or a group publish) did to the local table ``name``.

    ``inserted``/``updated``/``deleted`` count the change messages written to the table, and
    ``keys`` maps each operation to their message keys — except for a refetch (``refetch`` True:
    every row was replaced by a new snapshot), where ``inserted`` is the new row count and
    ``keys`` stays empty, so memory does not grow with the shape. ``published`` is False when the
    changes were only staged (``staged`` counts what waits on disk) or the commit was a
    redelivery of an older position. ``rows`` is the table's row count after the call.
    ``dropped`` names user indexes/triggers that no longer applied after a schema change.
    ``lsn``: the LSN the table's rows are now at (the group's, or the shape's up-to-date), when
    known; ``txids``: the transactions whose changes this made visible; ``snapshot``: what the
    snapshot it published saw.
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
    lsn: int | None = None
    txids: tuple[int, ...] = ()
    snapshot: Visibility | None = None


@dataclass(frozen=True)
class _Pending:
    """What one publish writes: the shape, the table's schema, and where the rows will stand."""

    shape: Shape
    table: TableSchema
    raw_schema: Mapping[str, Any]
    position: tuple[str | None, str | None, str | None]  # handle, offset, cursor
    refetch: bool
    snapshot: Visibility | None
    lsn: int | None


def publish(
    conn: apsw.Connection,
    commit: Commit,
    published: positions.Published | None,
    stage: positions.Stage | None,
    attached: fast.Attached | None,
    now: float,
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
    seen = commit.snapshot or (stage.snapshot if stage is not None else None)
    pending = _Pending(commit.shape, table, raw_schema, (checkpoint.handle, checkpoint.offset, checkpoint.cursor),
                       refetch, seen if refetch else None, commit.complete)
    txlog.stage(conn, name, () if isinstance(commit.changes, InsertBody) else commit.changes)
    return _write(conn, pending, published, stage is not None, commit.changes, attached, None, now)


def publish_stage(
    conn: apsw.Connection, shape: Shape, published: positions.Published | None, stage: positions.Stage, upto: int,
    now: float,
) -> Applied:
    """A consistency group's publish, for one member: what ``stage`` holds at or below the LSN ``upto``.

    A staged snapshot must have reached up-to-date; that it is the state at some LSN at or below
    ``upto`` is the group's to decide (``sync.group``: it needs more than this database knows).
    """
    name = shape.local_name
    if stage.schema is None:
        raise ProtocolError(f"no electric-schema known for shape {name!r}: cannot create its table")
    if stage.refetch and stage.snapshot_lsn is None:
        raise StoreError(f"the snapshot staged for {name!r} has not reached up-to-date; it cannot be published yet")
    table = TableSchema.from_electric(stage.schema, shape.overrides)
    pending = _Pending(shape, table, stage.schema, (stage.handle, stage.offset, stage.cursor), stage.refetch,
                       stage.snapshot if stage.refetch else None, upto)
    return _write(conn, pending, published, True, (), None, upto, now)


def _write(
    conn: apsw.Connection,
    pending: _Pending,
    published: positions.Published | None,
    staged: bool,
    own: Changes,
    attached: fast.Attached | None,
    upto: int | None,
    now: float,
) -> Applied:
    name, writable = pending.shape.local_name, pending.shape.writable
    if not writable and overlay.is_view(conn, name):  # it was writable: back to a plain table
        dropped_writes = overlay.drop(conn, name)
        conn.execute(f"DROP TABLE main.{quote_ident(overlay.synced_name(name))}")
        if dropped_writes:
            log.warning("shape %r is no longer writable: %d local changes not uploaded were dropped",
                        name, dropped_writes)
    target = overlay.stored_name(name, writable)  # the synced rows' table
    exists = tables.table_exists(conn, target)
    if writable and not exists and tables.table_exists(conn, name) and (published is None or
                                                                        published.definition is None):
        exists = True  # not replica's table: refused below
    if exists and (published is None or published.definition is None):
        raise ShapeError(
            f"table {name!r} already exists and was not created by replica; "
            "give the shape another name, or drop the table"
        )
    if not exists and not pending.refetch:
        raise StoreError(f"table {name!r} disappeared (dropped outside replica?); it will be synced again")
    tally = tables.Tally(keep_keys=not pending.refetch)
    writer = tables.TableWriter(conn, target, pending.table)
    dropped: list[str] = []
    if pending.refetch:
        if not snapshots.exists(conn, name):
            snapshots.create(conn, name, pending.table)  # a snapshot whose first response is also its last
        elif not snapshots.matches(conn, name, pending.table):
            raise StoreError(f"the snapshot staged for {name!r} has other columns now; it is fetched again")
        snapshots.append(conn, name, own, pending.table, attached, tagged=pending.shape.subquery)  # its last changes
        own = ()
        if exists:
            dropped = _ensure(conn, target, pending.table, keep_rows=False)
        snapshots.publish(conn, name, pending.table, replace=exists, into=target)
        writer = tables.TableWriter(conn, target, pending.table)
    else:
        dropped = _ensure(conn, target, pending.table, keep_rows=True)
    rows_of = tags.Tagger(conn, name, pending.table).rows if pending.shape.subquery else tables.plain_rows
    if staged:
        writer.apply(rows_of(changelog.read(conn, name, upto)), tally)
        changelog.clear(conn, name, upto)
    changes = own.changes() if isinstance(own, InsertBody) else own
    writer.apply(rows_of(changes), tally)
    writer.flush()
    rows = int(conn.execute(f"SELECT count(*) FROM main.{quote_ident(target)}").fetchone()[0])  # type: ignore[index]
    remaining = changelog.count(conn, name) if staged else 0
    _record(conn, pending, rows, now, position=remaining == 0)
    txids = txlog.publish(conn, name, now, upto)
    if pending.snapshot is not None:
        txlog.record_snapshot(conn, name, pending.snapshot, now)
    if writable:  # confirmed local writes leave in this very transaction: no flicker (§3j)
        overlay.ensure(conn, name, pending.shape.table, pending.table)
        outbox.confirm(conn, name, txids, None if pending.refetch else pending.lsn, pending.snapshot, now)
        overlay.refold(conn, name, pending.table)
    inserted = rows if pending.refetch else tally.counts[wire.INSERT]
    return Applied(
        name,
        inserted=inserted,
        updated=tally.counts[wire.UPDATE],
        deleted=tally.counts[wire.DELETE],
        keys={op: tuple(keys) for op, keys in tally.keys.items()} if not pending.refetch else {},
        rows=rows,
        refetch=pending.refetch,
        published=True,
        staged=remaining,
        dropped=tuple(dropped),
        lsn=pending.lsn,
        txids=tuple(txids),
        snapshot=pending.snapshot,
    )


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


def _record(conn: apsw.Connection, pending: _Pending, rows: int, now: float, *, position: bool) -> None:
    """Write the published state to ``_replica_shapes``: its definition, schema, row count and sync
    time, and (``position``: nothing of the stage is left) the position to resume from.

    A publish proves the shape works, so it also marks it live and clears a stored error.
    """
    name = pending.shape.local_name
    conn.execute(
        'INSERT INTO "_replica_shapes" ("name", "definition", "schema", "rows", "last_synced_at", "state", "error") '
        "VALUES (?, ?, ?, ?, ?, 'live', NULL) "
        'ON CONFLICT ("name") DO UPDATE SET "definition" = excluded."definition", "schema" = excluded."schema", '
        '"rows" = excluded."rows", "last_synced_at" = excluded."last_synced_at", "state" = \'live\', "error" = NULL',
        (name, pending.shape.definition(), positions.dump_schema(pending.raw_schema), rows, iso_time(now)),
    )
    if position:  # else a part-published stage: its own position is where to resume
        conn.execute('UPDATE "_replica_shapes" SET "handle" = ?, "offset" = ?, "cursor" = ? WHERE "name" = ?',
                     (*pending.position, name))


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
