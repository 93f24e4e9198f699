"""A writable shape's local table: synced rows overlaid by pending local changes (design.md §3j).

For a writable shape ``T`` the synced rows live in ``_replica_synced_T``; ``_replica_pending_T`` holds,
per primary key with pending changes, the row as those changes leave it (or a tombstone,
``_replica_deleted`` = 1); ``T`` is a view of the synced rows without a pending key, plus the pending
rows that are no tombstone. INSTEAD OF triggers on ``T`` write a change to ``_replica_outbox`` and the
new pending row, in the app's own transaction and with plain SQL, so any SQLite library can write.

The invariant: a pending row is the fold of its key's outbox changes, in order, over the synced
row (an insert gives its value, an update sets its columns, a delete a tombstone). The triggers keep
it (the view row they change is that fold); the writer restores it with ``refold`` after anything
that changes either side: a publish, a confirmed or rejected batch.

Used only by ``replica.store``, inside its transactions and its apsw-error boundary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import apsw

from replica.errors import ShapeError
from replica.typemap.schema import SYNCED_PREFIX, SQLValue, TableSchema, quote_ident

__all__ = ["DELETED", "drop", "ensure", "is_view", "pending_name", "refold", "stored_name", "synced_name"]

DELETED = "_replica_deleted"
_PENDING = "_replica_pending_"
_OPS = ("insert", "update", "rekey", "delete")


def synced_name(name: str) -> str:
    return SYNCED_PREFIX + name


def pending_name(name: str) -> str:
    return _PENDING + name


def stored_name(name: str, writable: bool) -> str:
    """The table that holds a shape's synced rows."""
    return synced_name(name) if writable else name


def is_view(conn: apsw.Connection, name: str) -> bool:
    """True if ``name`` is a writable shape's view (replica's: its synced table exists)."""
    row = conn.execute(
        "SELECT count(*) FROM main.sqlite_schema WHERE (type = 'view' AND name = ? COLLATE NOCASE) "
        "OR (type = 'table' AND name = ? COLLATE NOCASE)", (name, synced_name(name))).fetchone()
    return row is not None and int(row[0]) == 2


def ensure(conn: apsw.Connection, name: str, table: str, schema: TableSchema) -> None:
    """Give ``name`` its view, triggers and pending table for ``schema`` (made or remade as needed).

    ``table`` is the Postgres table the outbox names. Pending rows keep the columns that remain.
    """
    if not schema.keyed or any(c.declared_type == "BLOB" for c in schema.columns if c.name in schema.pk):
        raise ShapeError(f"shape {name!r} is writable, but its table has no primary key (or a bytea one): a "
                         "local change needs a key to name its row; make the shape read-only or change the key")
    kind = conn.execute("SELECT type FROM main.sqlite_schema WHERE name = ? COLLATE NOCASE",
                        (name,)).fetchone()
    if kind is not None and kind[0] == "table":
        # the read-only table of this shape before it became writable: its rows are in the synced table now
        conn.execute(f"DROP TABLE main.{quote_ident(name)}")
    pending = pending_name(name)
    wanted = _pending_ddl(pending, schema)
    current = conn.execute("SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?",
                           (pending,)).fetchone()
    view_sql = _view_sql(name, schema)
    have_view = conn.execute("SELECT sql FROM main.sqlite_schema WHERE type = 'view' AND name = ?",
                             (name,)).fetchone()
    if current is not None and current[0] == wanted and have_view is not None and have_view[0] == view_sql:
        return
    conn.execute(f"DROP VIEW IF EXISTS main.{quote_ident(name)}")  # its triggers go with it
    if current is None:
        conn.execute(wanted)
    elif current[0] != wanted:
        _rebuild_pending(conn, pending, wanted, schema)
    conn.execute(view_sql)
    for sql in _trigger_sql(name, table, schema):
        conn.execute(sql)


def drop(conn: apsw.Connection, name: str) -> int:
    """Remove a writable shape's view, pending rows and outbox rows (it became read-only); how many
    pending changes were dropped. The synced table is left to the caller."""
    conn.execute(f"DROP VIEW IF EXISTS main.{quote_ident(name)}")
    conn.execute(f"DROP TABLE IF EXISTS main.{quote_ident(pending_name(name))}")
    conn.execute('DELETE FROM "_replica_outbox" WHERE "name" = ?', (name,))
    return conn.changes()


def refold(conn: apsw.Connection, name: str, schema: TableSchema) -> None:
    """Make every pending row the fold of its key's outbox changes over its synced row; drop the
    pending rows of keys with no change left."""
    pending, synced = quote_ident(pending_name(name)), quote_ident(synced_name(name))
    by_key: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, operation, value in conn.execute(
            'SELECT "key", "operation", "value" FROM "_replica_outbox" WHERE "name" = ? ORDER BY "seq"', (name,)):
        by_key.setdefault(str(key), []).append((str(operation), json.loads(str(value))))
    pk, names = schema.pk, schema.names
    match = " AND ".join(f"{quote_ident(c)} = ?" for c in pk)
    columns = ", ".join(quote_ident(c) for c in names)
    # The outbox's keys were read from pending rows by the triggers: stored values, comparable as they are.
    keys_left = {tuple(json.loads(k).get(c) for c in pk) for k in by_key}
    pk_list = ", ".join(quote_ident(c) for c in pk)
    gone = [row for row in conn.execute(f"SELECT {pk_list} FROM main.{pending}") if tuple(row) not in keys_left]
    if gone:
        match_pending = " AND ".join(f"{quote_ident(c)} = ?" for c in pk)
        conn.executemany(f"DELETE FROM main.{pending} WHERE {match_pending}", gone)
    upsert = _upsert_sql("main." + pending, schema)
    decode = _decoders(schema)
    for key_text, changes in by_key.items():
        key = json.loads(key_text)
        key_values = [decode[c](key.get(c)) for c in pk]
        found = conn.execute(f"SELECT {columns} FROM main.{synced} WHERE {match}", key_values).fetchone()
        row: dict[str, SQLValue] | None = None if found is None else dict(zip(names, found, strict=True))
        for operation, value in changes:
            if operation == "delete":
                row = None
            elif operation == "insert":
                row = {c: decode[c](value.get(c)) for c in names}
            elif row is not None:  # an update of a row the server has since deleted changes nothing
                row.update((c, decode[c](v)) for c, v in value.items() if c in decode)
        if row is None:
            conn.execute(upsert, [*key_values, *(None for _ in names[len(pk):]), 1])
        else:
            conn.execute(upsert, [*(row[c] for c in pk), *(row[c] for c in names if c not in pk), 0])


# --- SQL ---


def _pending_ddl(pending: str, schema: TableSchema) -> str:
    # No NOT NULL but the key's, as in the synced table; a tombstone leaves the other columns NULL.
    parts = [f"{quote_ident(c.name)} {c.declared_type}" + (" NOT NULL" if c.name in schema.pk else "")
             for c in schema.columns]
    parts.append(f'"{DELETED}" INTEGER NOT NULL DEFAULT 0')
    parts.append("PRIMARY KEY (" + ", ".join(quote_ident(c) for c in schema.pk) + ")")
    return f"CREATE TABLE {quote_ident(pending)} (" + ", ".join(parts) + ")"


def _rebuild_pending(conn: apsw.Connection, pending: str, ddl: str, schema: TableSchema) -> None:
    old = {str(row[1]) for row in conn.execute(f"PRAGMA main.table_info({quote_ident(pending)})")}
    common = ", ".join(quote_ident(c) for c in (*schema.names, DELETED) if c in old)
    conn.execute(f"ALTER TABLE main.{quote_ident(pending)} RENAME TO \"_replica_pending_old\"")
    conn.execute(ddl)
    if all(c in old for c in schema.pk):
        conn.execute(f"INSERT INTO main.{quote_ident(pending)} ({common}) SELECT {common} "
                     'FROM main."_replica_pending_old"')
    conn.execute('DROP TABLE main."_replica_pending_old"')


def _view_sql(name: str, schema: TableSchema) -> str:
    columns = ", ".join(quote_ident(c) for c in schema.names)
    match = " AND ".join(f"p.{quote_ident(c)} = s.{quote_ident(c)}" for c in schema.pk)
    return (f"CREATE VIEW {quote_ident(name)} AS SELECT {', '.join('s.' + quote_ident(c) for c in schema.names)} "
            f"FROM {quote_ident(synced_name(name))} AS s WHERE NOT EXISTS (SELECT 1 FROM "
            f"{quote_ident(pending_name(name))} AS p WHERE {match}) UNION ALL SELECT {columns} FROM "
            f"{quote_ident(pending_name(name))} WHERE \"{DELETED}\" = 0")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _encoded(ref: str) -> str:
    """A value as JSON can hold it: a BLOB as Postgres' bytea text, ±inf as Postgres spells it."""
    return (f"CASE typeof({ref}) WHEN 'blob' THEN '\\x' || lower(hex({ref})) WHEN 'real' THEN CASE "
            f"WHEN {ref} = 9e999 THEN 'Infinity' WHEN {ref} = -9e999 THEN '-Infinity' ELSE {ref} END ELSE {ref} END")


def _pairs(columns: Iterable[str], row: str) -> str:
    prefix = f"{row}." if row else ""
    return ", ".join(f"{_literal(c)}, {_encoded(prefix + quote_ident(c))}" for c in columns)


def _same_key(schema: TableSchema) -> str:
    return " AND ".join(f"OLD.{quote_ident(c)} IS NEW.{quote_ident(c)}" for c in schema.pk)


def _checks(name: str, schema: TableSchema) -> list[str]:
    """What a table would refuse: a NULL key, a key that is taken (the app sees the usual errors)."""
    shown = ", ".join(f"{name}.{c}" for c in schema.pk)
    null = " OR ".join(f"NEW.{quote_ident(c)} IS NULL" for c in schema.pk)
    taken = " AND ".join(f"{quote_ident(c)} = NEW.{quote_ident(c)}" for c in schema.pk)
    return [
        f"SELECT RAISE(ABORT, {_literal('NOT NULL constraint failed: ' + shown)}) WHERE {null};",
        f"SELECT RAISE(ABORT, {_literal('UNIQUE constraint failed: ' + shown)}) "
        f"WHERE EXISTS (SELECT 1 FROM {quote_ident(name)} WHERE {taken});",
    ]


def _outbox(name: str, table: str, operation: str, key: str, value: str) -> str:
    return ('INSERT INTO "_replica_outbox" ("name", "table", "operation", "key", "value") '
            f"VALUES ({_literal(name)}, {_literal(table)}, '{operation}', {key}, {value});")


def _upsert_sql(pending: str, schema: TableSchema, values: str | None = None) -> str:
    """Insert or replace one pending row: key columns, the others, then the tombstone flag."""
    order = [*schema.pk, *(c for c in schema.names if c not in schema.pk)]
    columns = ", ".join(quote_ident(c) for c in (*order, DELETED))
    sets = ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}"
                     for c in (*order[len(schema.pk):], DELETED))
    marks = values if values is not None else ", ".join("?" for _ in range(len(order) + 1))
    target = ", ".join(quote_ident(c) for c in schema.pk)
    return f"INSERT INTO {pending} ({columns}) VALUES ({marks}) ON CONFLICT ({target}) DO UPDATE SET {sets}"


def _row_values(schema: TableSchema, row: str, deleted: int) -> str:
    order = [*schema.pk, *(c for c in schema.names if c not in schema.pk)]
    if deleted:
        return ", ".join([*(f"{row}.{quote_ident(c)}" for c in schema.pk), *("NULL" for _ in order[len(schema.pk):]),
                          "1"])
    return ", ".join([*(f"{row}.{quote_ident(c)}" for c in order), "0"])


def _trigger_sql(name: str, table: str, schema: TableSchema) -> list[str]:
    """The four INSTEAD OF triggers. Each writes the pending row first and takes what the outbox
    sends from it, so the outbox holds values as stored (column affinity applied: ``'5'`` written to
    an INTEGER column is sent as 5) and a key always reads the same."""
    view, pending = quote_ident(name), quote_ident(pending_name(name))
    rest = [c for c in schema.names if c not in schema.pk]
    at_new = " AND ".join(f"p.{quote_ident(c)} = NEW.{quote_ident(c)}" for c in schema.pk)
    from_new = f"FROM {pending} AS p WHERE {at_new}"
    key_new = f"(SELECT json_object({_pairs(schema.pk, 'p')}) {from_new})"
    whole = f"(SELECT json_object({_pairs(schema.names, 'p')}) {from_new})"
    key_old, empty = f"json_object({_pairs(schema.pk, 'OLD')})", "'{}'"
    # an update sends its key and the columns it changed, in schema order
    picks = " UNION ALL ".join(
        [f"SELECT {_literal(c)} AS k, {_encoded('p.' + quote_ident(c))} AS v {from_new}" for c in schema.pk]
        + [f"SELECT {_literal(c)}, {_encoded('p.' + quote_ident(c))} {from_new} "
           f"AND OLD.{quote_ident(c)} IS NOT p.{quote_ident(c)}" for c in rest])
    changed = " OR ".join(f"OLD.{quote_ident(c)} IS NOT p.{quote_ident(c)}" for c in rest) or "0"
    checks = "\n".join(_checks(name, schema))
    put = _upsert_sql(pending, schema, _row_values(schema, "NEW", 0)) + ";"
    tombstone = _upsert_sql(pending, schema, _row_values(schema, "OLD", 1)) + ";"
    trigger = {op: quote_ident(f"_replica_{name}_{op}") for op in _OPS}
    return [
        f"CREATE TRIGGER {trigger['insert']} INSTEAD OF INSERT ON {view} BEGIN\n{checks}\n{put}\n"
        f"{_outbox(name, table, 'insert', key_new, whole)}\nEND",
        f"CREATE TRIGGER {trigger['update']} INSTEAD OF UPDATE ON {view} WHEN {_same_key(schema)} BEGIN\n{put}\n"
        'INSERT INTO "_replica_outbox" ("name", "table", "operation", "key", "value") '
        f"SELECT {_literal(name)}, {_literal(table)}, 'update', {key_old}, "
        f"(SELECT json_group_object(k, v) FROM ({picks})) {from_new} AND ({changed});\nEND",
        f"CREATE TRIGGER {trigger['rekey']} INSTEAD OF UPDATE ON {view} WHEN NOT ({_same_key(schema)}) BEGIN\n"
        f"{checks}\n{tombstone}\n{_outbox(name, table, 'delete', key_old, empty)}\n{put}\n"
        f"{_outbox(name, table, 'insert', key_new, whole)}\nEND",
        f"CREATE TRIGGER {trigger['delete']} INSTEAD OF DELETE ON {view} BEGIN\n{tombstone}\n"
        f"{_outbox(name, table, 'delete', key_old, empty)}\nEND",
    ]


def _decoders(schema: TableSchema) -> dict[str, Any]:
    """JSON values from the outbox back to what the triggers stored (the inverse of ``_encoded``)."""
    def blob(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("\\x"):
            return bytes.fromhex(value[2:])
        return value

    def real(value: Any) -> Any:
        return {"Infinity": math.inf, "-Infinity": -math.inf}.get(value, value) if isinstance(value, str) else value

    def same(value: Any) -> Any:
        return value

    kinds = {"BLOB": blob, "REAL": real}
    return {c.name: kinds.get(c.declared_type, same) for c in schema.columns}
