"""A table's first snapshot, staged in the table's own layout and renamed into place at publish.

When a shape's local table does not exist yet (a first sync, or after it was dropped), its
snapshot is written straight into ``_replica_new_<name>``, created with the table's final DDL:
whole-row inserts by SQLite from the body (``tables.bulk_write``), anything else by
``TableWriter``. Publishing renames it — no second copy of every row, which for a wide table was
~15 % of an initial sync. Readers never see it: it has another name until the publish commits.
A refetch of an existing table keeps the typed stage (replica.staging), so the user's triggers
see its deletes and inserts as before.

Used only by ``replica.store`` and ``replica.publish``, inside their transactions.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from replica.protocol import snapshot as inserts
from replica.store import tables
from replica.typemap.schema import TableSchema, create_table_sql, quote_ident
from replica.store.staging import shadow_name
from replica.protocol.wire import Change

__all__ = ["append", "create", "exists", "matches", "swap_in"]


def exists(conn: apsw.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?", (shadow_name(name),))
    return row.fetchone() is not None


def create(conn: apsw.Connection, name: str, schema: TableSchema) -> None:
    head, shadow = f"CREATE TABLE {quote_ident(name)} (", f"CREATE TABLE main.{quote_ident(shadow_name(name))} ("
    conn.execute(create_table_sql(name, schema).replace(head, shadow, 1))


def matches(conn: apsw.Connection, name: str, schema: TableSchema) -> bool:
    """True if the shadow has exactly the columns, types and key ``schema`` (with overrides) gives."""
    return tables.signature(conn, shadow_name(name)) == schema.signature()


def append(conn: apsw.Connection, name: str, changes: Sequence[Change], schema: TableSchema) -> None:
    """Apply ``changes`` to the shadow in log order (ProtocolError names a bad value)."""
    writer = tables.TableWriter(conn, shadow_name(name), schema)
    if isinstance(changes, inserts.BodyChanges) and tables.bulk_write(conn, changes, schema, writer.upsert_from):
        return
    writer.apply(((c.operation, c.key, c.value) for c in changes), tables.Tally(keep_keys=False))
    writer.flush()


def swap_in(conn: apsw.Connection, name: str, schema: TableSchema) -> None:
    """The shadow becomes the table ``name`` (which must not exist)."""
    shadow = quote_ident(shadow_name(name))
    conn.execute("SAVEPOINT _replica_swap")
    try:
        conn.execute(f"ALTER TABLE main.{shadow} RENAME TO {quote_ident(name)}")
    except apsw.SQLError:
        # SQLite refuses to rename while a view or trigger names a missing table (e.g. a view the app
        # made on this table before its first sync): create it and copy instead.
        conn.execute("ROLLBACK TO _replica_swap")
        conn.execute(create_table_sql(name, schema))
        conn.execute(f"INSERT INTO main.{quote_ident(name)} SELECT * FROM main.{shadow}")
        conn.execute(f"DROP TABLE main.{shadow}")
    finally:
        conn.execute("RELEASE _replica_swap")
