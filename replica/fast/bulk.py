"""The one place a snapshot chunk becomes rows in SQL: ``write_inserts``.

SQLite reads the rows of an ``InsertBody`` straight from its JSON and converts them with the type
map written in SQL (``typemap.sql``), or copies the rows workers converted ahead (``convert``).
It runs without the GIL, so the next chunk downloads and validates meanwhile. Anything it
cannot do exactly is left to the Python route, which is the reference and names a bad value.

Runs inside the store's transaction; apsw errors other than a refusal of the SQL route propagate
to the store, which translates them.
"""

from __future__ import annotations

from collections.abc import Callable

import apsw

from replica.fast.convert import Attached
from replica.protocol.snapshot import InsertBody
from replica.typemap import sql
from replica.typemap.schema import TableSchema

__all__ = ["write_inserts"]

# What the SQL route may refuse with: a value only the Python converters can judge (they raise
# these from inside SQLite), JSON SQLite will not read, a NOT NULL key, or our own count check.
# Disk, I/O, lock and memory errors are not among them: those go to the store.
_REFUSALS = (apsw.SQLError, apsw.ConstraintError, apsw.MismatchError, ValueError, TypeError, RecursionError,
             OverflowError)


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
    select = sql.bulk_select_sql(table, key)
    if select is None:
        return False
    statements: list[tuple[str, tuple[str, ...]]]
    if attached is not None and "s.k" not in key:
        statements = [(into(sql.attached_select(len(table.names), key, name)), ()) for name in attached.names]
    elif changes.nul_escapes():
        return False
    else:
        statements = [(into(select), (changes.body.decode("utf-8"),))]
    conn.execute("SAVEPOINT _replica_bulk")
    try:
        written = 0
        for statement, params in statements:
            conn.execute(statement, params, can_cache=False)  # a cached statement would keep the body bound
            written += conn.changes()
        if written != changes.count:
            raise _Mismatch(f"{written} rows written for {changes.count} inserts")
    except _REFUSALS:
        conn.execute("ROLLBACK TO _replica_bulk")
        return False
    finally:
        conn.execute("RELEASE _replica_bulk")
    return True
