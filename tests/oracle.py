"""A reader for tests: what SQLite holds vs what the fake says a shape must hold.

Reads through its own read-only connection made by ``replica.connect`` (apsw: Python's sqlite3
module must not open the file in the process that syncs it, see README), not through the
store; converts the fake's Postgres text with the type map, so a mismatch in either direction
shows up as a plain dict diff. Tests that want a reader of another make (sqlite-utils, stdlib
sqlite3) run it in a subprocess: see ``test_sync.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replica import connect
from replica.testing import FakeElectric
from replica.typemap.schema import TableSchema


def expected(fake: FakeElectric, table: str, *, where: str | None = None, params: dict | None = None,
             columns: list[str] | None = None) -> dict[tuple, dict[str, Any]]:
    """The rows a shape of ``table`` must hold now, as SQLite values keyed by primary key."""
    full = fake.schema(table)
    spec = {name: full[name] for name in full if columns is None or name in columns}
    schema = TableSchema.from_electric(spec)
    result = {}
    for row in fake.rows(table, where=where, params=params, columns=columns).values():
        converted = schema.convert_row(row)
        result[tuple(converted[c] for c in schema.pk)] = converted
    return result


def local(db_path: str | Path, name: str, pk: tuple[str, ...] | list[str]) -> dict[tuple, dict[str, Any]]:
    """The rows of local table ``name``, read through a fresh connection."""
    if not Path(db_path).exists():
        return {}
    conn = connect(db_path)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchall():
            return {}
        quoted = '"' + name.replace('"', '""') + '"'
        columns = [info[1] for info in conn.execute(f"PRAGMA table_info({quoted})")]
        rows = [dict(zip(columns, values, strict=True)) for values in conn.execute(f"SELECT * FROM {quoted}")]
        return {tuple(row[c] for c in pk): row for row in rows}
    finally:
        conn.close()


def pk_of(fake: FakeElectric, table: str) -> tuple[str, ...]:
    return TableSchema.from_electric(fake.schema(table)).pk
