"""An independent reader for tests: what SQLite holds vs what the fake says a shape must hold.

Reads with sqlite-utils (not apsw, not replica's store), and converts the fake's Postgres text
with the type map, so a mismatch in either direction shows up as a plain dict diff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlite_utils

from replica.schema import TableSchema
from replica.testing import FakeElectric


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
    db = sqlite_utils.Database(str(db_path))
    try:
        if name not in db.table_names():
            return {}
        return {tuple(row[c] for c in pk): row for row in db[name].rows}
    finally:
        db.close()


def pk_of(fake: FakeElectric, table: str) -> tuple[str, ...]:
    return TableSchema.from_electric(fake.schema(table)).pk
