"""``electric-schema`` → a ``TableSchema``: columns, primary key, DDL, identifier quoting.

Pure (no apsw): ``replica.store`` turns a ``TableSchema`` into tables and binds the values that
``TableSchema.convert_row`` returns. Each column's converter comes from ``replica.values``, which
holds the Postgres text → SQLite value map (design.md §5); this module declares the matching
SQLite types (INTEGER, REAL, BLOB or TEXT) and applies per-column overrides.

A value that does not parse as its column's type raises ``ProtocolError`` naming the column and
the value: it means the server and the schema disagree, so storing it silently would put wrong
types in a typed column. The syncer backs off and the shape's status shows the message; the
remedy for a column that genuinely carries odd text is the ``"text"`` override (keep as sent).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from replica.errors import ProtocolError, ShapeError
from replica.typemap.values import (
    BOOL_TYPES,
    FLOAT_TYPES,
    INT_TYPES,
    SQLValue,
    array_converter,
    scalar_converter,
    to_float,
)

__all__ = [
    "OVERRIDES",
    "SYNCED_PREFIX",
    "Column",
    "SQLValue",
    "TableSchema",
    "check_table_name",
    "create_table_sql",
    "fold_ident",
    "identity_index_name",
    "identity_index_sql",
    "quote_ident",
]

# Per-column overrides: "real" stores numbers as floats (lossy for numeric), "text" keeps the value
# exactly as sent whatever the type (the escape hatch for values the strict converters refuse).
OVERRIDES = frozenset({"real", "text"})


def quote_ident(name: str) -> str:
    """A SQLite identifier in double quotes; any name works (quotes, spaces, keywords, unicode)."""
    return '"' + name.replace('"', '""') + '"'


def _declared_type(pg_type: str, dims: int) -> str:
    if dims:
        return "TEXT"
    if pg_type in INT_TYPES or pg_type in BOOL_TYPES:
        return "INTEGER"
    if pg_type in FLOAT_TYPES:
        return "REAL"
    if pg_type == "bytea":
        return "BLOB"
    # Only the four plain names: a declared type like "JSON" or "POINT" gets NUMERIC/INTEGER
    # affinity in SQLite and would turn the text "123" into a number.
    return "TEXT"


# --- columns and tables ---


@dataclass(frozen=True)
class Column:
    """One column of a synced table: Postgres type name, array dims, PK position, nullability."""

    name: str
    type: str
    dims: int = 0
    pk_index: int | None = None
    not_null: bool = False
    override: str | None = None

    @property
    def declared_type(self) -> str:
        if self.override == "real":
            return "REAL"
        if self.override == "text":
            return "TEXT"
        return _declared_type(self.type, self.dims)

    def converter(self) -> Callable[[str], SQLValue]:
        if self.override == "text":
            return str
        if self.override == "real":
            return to_float  # numeric/money as a float: lossy, by request
        if self.dims:
            return array_converter(self.type)
        return scalar_converter(self.type)


@dataclass(frozen=True)
class TableSchema:
    """The columns of a shape in ``electric-schema`` order, and its identity columns.

    ``pk`` is the primary key in ``pk_index`` order; a table without one (``keyed`` False) is
    identified by all its columns sorted by name, as Electric builds its keys.
    """

    columns: tuple[Column, ...]
    pk: tuple[str, ...]
    keyed: bool

    @classmethod
    def from_electric(cls, schema: Mapping[str, Any], overrides: Mapping[str, str] | None = None) -> TableSchema:
        """Read an ``electric-schema`` object; ShapeError names what makes it unusable."""
        if not isinstance(schema, Mapping):
            raise ShapeError(f"electric-schema must be an object of column → {{type, …}}, got {type(schema).__name__}")
        if not schema:
            raise ShapeError("electric-schema has no columns; a shape must select at least one column")
        overrides = dict(overrides or {})
        columns: list[Column] = []
        folded: dict[str, str] = {}
        for name, spec in schema.items():
            columns.append(_column(name, spec, overrides.pop(name, None) if isinstance(name, str) else None))
            key = fold_ident(name)
            if key in folded:
                raise ShapeError(
                    f"columns {folded[key]!r} and {name!r} differ only in case, but SQLite column "
                    "names are case-insensitive; leave one out with the shape's columns"
                )
            folded[key] = name
        if overrides:
            raise ShapeError(f"overrides name columns that are not in the shape: {sorted(overrides)}")
        keyed = [c for c in columns if c.pk_index is not None]
        if keyed:
            positions = sorted(c.pk_index for c in keyed if c.pk_index is not None)
            if positions != list(range(len(keyed))):
                raise ShapeError(f"electric-schema pk_index values must be 0..n-1 without gaps, got {positions}")
            pk = tuple(c.name for c in sorted(keyed, key=lambda c: c.pk_index or 0))
        else:
            pk = tuple(sorted(c.name for c in columns))
        return cls(tuple(columns), pk, bool(keyed))

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @cached_property
    def converters(self) -> dict[str, Callable[[str], SQLValue]]:
        return {c.name: c.converter() for c in self.columns}

    def convert_row(self, value: Mapping[str, str | None]) -> dict[str, SQLValue]:
        """Convert one message value (column → text | None); ProtocolError names a bad column or value."""
        row: dict[str, SQLValue] = {}
        converters = self.converters
        for name, text in value.items():
            convert = converters.get(name)
            if convert is None:
                raise ProtocolError(
                    f"a change carries column {name!r}, which is not in electric-schema {list(self.names)}"
                )
            if text is None:
                row[name] = None
                continue
            try:
                row[name] = convert(text)
            except (ValueError, TypeError, RecursionError) as exc:
                raise ProtocolError(self._bad_value(name, text, exc)) from None
        return row

    @cached_property
    def _fast(self) -> tuple[Any, list[tuple[int, Callable[[str], SQLValue]]]]:
        getter = operator.itemgetter(*self.names)
        active = [(i, c.converter()) for i, c in enumerate(self.columns) if c.converter() is not str]
        return getter, active

    def convert_full_rows(self, values: Sequence[Mapping[str, str | None]]) -> list[tuple[SQLValue, ...]]:
        """Convert values that carry every column, column by column; rows come out in schema order.

        The bulk path of snapshots: text columns (whose converter is the identity) are not
        touched, the others run one list comprehension each. Errors read as ``convert_row``'s.
        """
        getter, active = self._fast
        width = len(self.names)
        try:
            if width == 1:
                rows: list[Any] = [(v[self.names[0]],) for v in values if len(v) == 1]
            else:
                rows = [getter(v) for v in values if len(v) == width]
        except KeyError:
            rows = []
        if len(rows) != len(values):
            for value in values:  # a missing or unknown column: let the careful path say which
                if len(value) != width or any(name not in value for name in self.names):
                    self.convert_row(value)
                    raise ProtocolError(f"a change lacks some of the columns {list(self.names)}")
        if not active or not rows:
            return rows
        columns: list[Any] = list(zip(*rows, strict=True))
        for index, convert in active:
            try:
                columns[index] = [None if text is None else convert(text) for text in columns[index]]
            except (ValueError, TypeError, RecursionError):
                for value in values:
                    self.convert_row(value)  # raises the ProtocolError naming the value
                raise
        return list(zip(*columns, strict=True))

    def check_keys(self, rows: Sequence[Sequence[SQLValue]]) -> None:
        """ProtocolError if a whole row (in schema order) of a keyed table has a NULL key column."""
        if self.keyed:
            positions = [self.names.index(c) for c in self.pk]
            if any(row[i] is None for row in rows for i in positions):
                raise ProtocolError(f"insert message lacks primary-key column(s) {list(self.pk)}")

    def _bad_value(self, name: str, text: str, exc: Exception) -> str:
        shown = text if len(text) <= 60 else text[:57] + "..."
        column = next(c for c in self.columns if c.name == name)
        kind = column.type + "[]" * column.dims
        return (
            f"column {name!r} ({kind}): cannot store {shown!r}: {exc}; if the source really sends "
            "such values, override the column to 'text' to keep them as sent"
        )

    def signature(self) -> list[tuple[str, str, int]]:
        """(name, declared type, 1-based PK position or 0) per column, as ``PRAGMA table_info`` reports."""
        position = {name: i + 1 for i, name in enumerate(self.pk)} if self.keyed else {}
        return [(c.name, c.declared_type, position.get(c.name, 0)) for c in self.columns]


def fold_ident(name: str) -> str:
    # SQLite folds identifier case for ASCII letters only.
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _column(name: Any, spec: Any, override: str | None) -> Column:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ShapeError(f"electric-schema has an unusable column name {name!r}")
    if not isinstance(spec, Mapping):
        raise ShapeError(f"electric-schema column {name!r} must be an object with a type, got {spec!r}")
    pg_type = spec.get("type")
    if not isinstance(pg_type, str) or not pg_type:
        raise ShapeError(f"electric-schema column {name!r} has no type")
    dims = spec.get("dims", 0)
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 0:
        raise ShapeError(f"electric-schema column {name!r}: dims must be a non-negative integer, got {dims!r}")
    pk_index = spec.get("pk_index")
    if pk_index is not None and (not isinstance(pk_index, int) or isinstance(pk_index, bool) or pk_index < 0):
        raise ShapeError(f"electric-schema column {name!r}: pk_index must be a non-negative integer")
    if override is not None and override not in OVERRIDES:
        raise ShapeError(f"override for column {name!r} must be one of {sorted(OVERRIDES)}, got {override!r}")
    if override == "real" and dims:
        raise ShapeError(f"override 'real' cannot apply to the array column {name!r}")
    return Column(name, pg_type, dims, pk_index, spec.get("not_null") is True, override)


def create_table_sql(local_name: str, schema: TableSchema | Mapping[str, Any]) -> str:
    """``CREATE TABLE`` for a synced table: declared types, PRIMARY KEY in pk_index order.

    Only primary-key columns are NOT NULL: Electric reports nullability live and it may change
    without a new handle, so mirroring it would make later rows fail. A table without a primary
    key gets no PRIMARY KEY: Postgres allows NULLs in its columns (SQLite's PRIMARY KEY would
    treat NULLs as distinct and ``=`` never matches NULL), so the store identifies its rows by
    ``IS`` over all columns, served by ``identity_index_sql``.
    """
    if not isinstance(schema, TableSchema):
        schema = TableSchema.from_electric(schema)
    check_table_name(local_name.removeprefix(SYNCED_PREFIX))  # a writable shape's synced rows: design.md §3j
    pk = set(schema.pk) if schema.keyed else set()
    parts = [f"{quote_ident(c.name)} {c.declared_type}" + (" NOT NULL" if c.name in pk else "") for c in schema.columns]
    if schema.keyed:
        parts.append("PRIMARY KEY (" + ", ".join(quote_ident(n) for n in schema.pk) + ")")
    return f"CREATE TABLE {quote_ident(local_name)} (" + ", ".join(parts) + ")"


def identity_index_name(local_name: str) -> str:
    return "_replica_identity_" + local_name


def identity_index_sql(local_name: str, schema: TableSchema) -> str | None:
    """The index that finds a PK-less table's rows by all columns; None for a keyed table."""
    if schema.keyed:
        return None
    columns = ", ".join(quote_ident(n) for n in schema.pk)
    return (
        f"CREATE INDEX IF NOT EXISTS {quote_ident(identity_index_name(local_name))} "
        f"ON {quote_ident(local_name)} ({columns})"
    )


SYNCED_PREFIX = "_replica_synced_"


def check_table_name(local_name: str) -> None:
    """ShapeError unless ``local_name`` can be a synced table (not empty, not reserved)."""
    if not local_name or "\x00" in local_name:
        raise ShapeError(f"unusable local table name {local_name!r}")
    folded = fold_ident(local_name)
    if folded.startswith(("_replica", "sqlite_")):
        raise ShapeError(
            f"local table name {local_name!r} is reserved (_replica… is replica's, sqlite_… is SQLite's); "
            "choose another name for the shape"
        )
