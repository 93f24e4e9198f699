"""A snapshot being staged, in ``_replica_new_<name>``: the synced table's own layout, changed in place.

A snapshot (a first sync, a 409 refetch, a new definition) replaces every row of its table, so
its changes apply to a table of the final layout as they arrive: whole-row inserts by SQLite
from the body (``replica.fast``), anything else by ``TableWriter``. Readers never see it: it has
another name until the publish commits. At publish it is renamed into place when the table does
not exist yet (no second copy of every row: ~15 % of a wide initial sync; a small one is copied,
since a rename re-parses the whole schema, which costs with many tables), else its rows replace
the old ones with a DELETE and one INSERT … SELECT, so the table's indexes, triggers and views
stay and triggers see the refetch's deletes and inserts.

Used only by ``replica.store``, inside its transactions and its apsw-error boundary.
"""

from __future__ import annotations

import apsw

from replica import fast
from replica.protocol.messages import Change, Move
from replica.protocol.shapelog import Changes
from replica.protocol.snapshot import InsertBody
from replica.store import tables, tags
from replica.typemap.schema import TableSchema, create_table_sql, identity_index_name, identity_index_sql, quote_ident

__all__ = ["append", "create", "drop", "exists", "matches", "publish", "table_name"]


# Snapshots of at most this many rows are copied into place rather than renamed (design.md §3a).
COPY_BELOW = 1000


def _copy(conn: apsw.Connection, name: str, table: TableSchema, snapshot: str) -> None:
    conn.execute(create_table_sql(name, table))
    conn.execute(f"INSERT INTO main.{quote_ident(name)} SELECT * FROM main.{snapshot}")
    conn.execute(f"DROP TABLE main.{snapshot}")


def table_name(name: str) -> str:
    return "_replica_new_" + name


def exists(conn: apsw.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?", (table_name(name),))
    return row.fetchone() is not None


def create(conn: apsw.Connection, name: str, table: TableSchema) -> None:
    snapshot = table_name(name)
    conn.execute(f"DROP TABLE IF EXISTS main.{quote_ident(snapshot)}")
    tags.drop(conn, snapshot)
    conn.execute(_ddl(name, table, f"main.{quote_ident(snapshot)}"))
    index = identity_index_sql(snapshot, table)  # a key-less table finds its rows by all columns
    if index is not None:
        conn.execute(index)


def drop(conn: apsw.Connection, name: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS main.{quote_ident(table_name(name))}")
    tags.drop(conn, table_name(name))


def matches(conn: apsw.Connection, name: str, table: TableSchema) -> bool:
    """True if the staged snapshot has exactly the columns, types and key ``table`` gives."""
    return tables.signature(conn, table_name(name)) == table.signature()


def append(
    conn: apsw.Connection, name: str, changes: Changes, table: TableSchema, attached: fast.Attached | None = None,
    *, tagged: bool = False,
) -> int:
    """Apply ``changes`` to the staged snapshot in log order (ProtocolError names a bad value); how many.

    ``attached``: rows of this very body converted ahead (``fast.Conversion.parts_for``);
    ``tagged``: a subquery shape's, whose tags and moves go with the snapshot (``tags``).
    """
    writer = tables.TableWriter(conn, table_name(name), table)
    if isinstance(changes, InsertBody):
        if table.keyed and fast.write_inserts(conn, changes, table, writer.upsert_from, attached=attached):
            return changes.count
        messages: list[Change] | tuple[Change | Move, ...] = changes.changes()  # the Python route: the reference
    else:
        messages = changes
    rows_of = tags.Tagger(conn, table_name(name), table).rows if tagged else tables.plain_rows
    writer.apply(rows_of(messages), tables.Tally(keep_keys=False))
    writer.flush()
    return len(messages)


def publish(conn: apsw.Connection, name: str, table: TableSchema, *, replace: bool, into: str | None = None) -> None:
    """The staged snapshot becomes the rows of ``name`` (or of ``into``, a writable shape's synced
    table): renamed (or, small, copied) into place
    (``replace`` False: the table must not exist), or copied over its rows (``replace`` True: the table has ``table``'s
    layout already). The snapshot table is gone afterwards."""
    snapshot = quote_ident(table_name(name))
    tags.replace(conn, table_name(name), name)
    name = into if into is not None else name  # a subquery shape's tags (anyone's stale ones go)
    if replace:
        columns = ", ".join(quote_ident(c) for c in table.names)
        conn.execute(f"DELETE FROM main.{quote_ident(name)}")  # the user's indexes and triggers stay
        conn.execute(f"INSERT INTO main.{quote_ident(name)} ({columns}) SELECT {columns} FROM main.{snapshot}")
        conn.execute(f"DROP TABLE main.{snapshot}")
        return
    conn.execute(f"DROP INDEX IF EXISTS main.{quote_ident(identity_index_name(table_name(name)))}")
    # ALTER TABLE … RENAME makes SQLite parse the whole schema again: with 1,000 shapes that was half
    # the CPU of their initial syncs. A small snapshot is cheaper copied than renamed.
    small = conn.execute(f"SELECT count(*) <= ? FROM (SELECT 1 FROM main.{snapshot} LIMIT ?)",
                         (COPY_BELOW, COPY_BELOW + 1)).fetchall()[0][0]
    if small:
        _copy(conn, name, table, snapshot)
    else:
        conn.execute("SAVEPOINT _replica_swap")
        try:
            conn.execute(f"ALTER TABLE main.{snapshot} RENAME TO {quote_ident(name)}")
        except apsw.SQLError:
            # SQLite refuses to rename while a view or trigger names a missing table (e.g. a view the
            # app made on this table before its first sync): create it and copy instead.
            conn.execute("ROLLBACK TO _replica_swap")
            _copy(conn, name, table, snapshot)
        finally:
            conn.execute("RELEASE _replica_swap")
    index = identity_index_sql(name, table)
    if index is not None:
        conn.execute(index)


def _ddl(name: str, table: TableSchema, target: str) -> str:
    head = f"CREATE TABLE {quote_ident(name)} ("
    return create_table_sql(name, table).replace(head, f"CREATE TABLE {target} (", 1)
