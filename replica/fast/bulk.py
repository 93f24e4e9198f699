"""The one place a snapshot chunk becomes rows in SQL: ``write_inserts``.

SQLite reads the rows of an ``InsertBody`` straight from its JSON and converts them with the type
map written in SQL (``typemap.sql``; the forms it leaves to Python resolved per column in one batch,
``convert.resolve``), or copies the rows workers converted ahead (``convert``).
It runs without the GIL, so the next chunk downloads and validates meanwhile. Anything it
cannot do exactly is left to the Python route, which is the reference and names a bad value.

Runs inside the store's transaction; apsw errors other than a refusal of the SQL route propagate
to the store, which translates them.
"""

from __future__ import annotations

from collections.abc import Callable

import apsw

from replica.fast.convert import Attached, resolve
from replica.protocol.snapshot import InsertBody
from replica.typemap import sql
from replica.typemap.schema import TableSchema

__all__ = ["write_inserts"]

# What the SQL route may refuse with: a value only the Python converters can judge (they raise
# these from inside SQLite), JSON SQLite will not read, a NOT NULL key, or our own count check.
# Disk, I/O, lock and memory errors are not among them: those go to the store.
_REFUSALS = (apsw.SQLError, apsw.ConstraintError, apsw.MismatchError, ValueError, TypeError, RecursionError,
             OverflowError)


_ROWS = "_replica_converted"  # the writer's own conversion of a body: a TEMP table, dropped before the step commits


class _Mismatch(ValueError):
    """The statement wrote another number of rows than the body has inserts (e.g. a NULL key)."""


def write_inserts(
    conn: apsw.Connection,
    changes: InsertBody,
    table: TableSchema,
    into: Callable[[str], str],
    *,
    key: str = "",
    attached: Attached | None = None,
) -> bool:
    """Run ``into(select)``, the select yielding ``changes``' rows converted; False (nothing
    written) when the SQL route cannot, and the caller takes the Python route.

    ``key`` starts the select list (``s.k``: the message key). ``attached``: the rows of this very
    body, converted ahead for ``table`` (``Conversion.parts_for`` checked both): only copied.
    Not for bodies with an escaped NUL (``InsertBody.nul_escapes``) nor key-less tables whose
    duplicates the Python route folds.
    """
    if set(changes.columns) != set(table.names) or len(changes.columns) != len(table.names):
        return False
    width = len(table.names)
    select = sql.bulk_select_sql(table, key, defer=True)
    if select is None:
        return False
    if attached is None and changes.nul_escapes():
        return False
    conn.execute("SAVEPOINT _replica_bulk")
    try:
        written = 0
        if attached is not None and "s.k" not in key:
            for name in attached.names:
                conn.execute(into(sql.attached_select(width, key, name)), can_cache=False)
                written += conn.changes()
        else:
            # Converted here as the workers convert ahead (``convert.convert``), into a temporary table
            # of this connection (ATTACH is refused inside a transaction): misses resolved per column in
            # one batch, never a Python call per value from SQL, which waited for the GIL each time.
            columns = ", ".join(["k"] * ("s.k" in key) + [f"c{i}" for i in range(width)])
            conn.execute(f"CREATE TEMP TABLE {_ROWS} ({columns})")
            # Not cached: a cached statement would keep the body bound.
            conn.execute(f"INSERT INTO temp.{_ROWS} {select}", (changes.body.decode("utf-8"),), can_cache=False)
            resolve(conn, table, f"temp.{_ROWS}")
            conn.execute(into(sql.attached_select(width, key, "temp", _ROWS)), can_cache=False)
            written = conn.changes()
            conn.execute(f"DROP TABLE temp.{_ROWS}")
        if written != changes.count:
            raise _Mismatch(f"{written} rows written for {changes.count} inserts")
    except _REFUSALS:
        conn.execute("ROLLBACK TO _replica_bulk")  # the temporary table too
        return False
    finally:
        conn.execute("RELEASE _replica_bulk")
    return True
