"""The type map in SQL: whole-row inserts read and converted by SQLite from the raw body (design.md §5).

A snapshot is mostly whole-row inserts. Converting them in Python costs more than everything
else in an initial sync, so the store may instead hand the response body to SQLite:
``bulk_select_sql`` selects the converted columns (and the message key if asked) per change, in
log order, from ``jsonb_each`` over the body. SQLite runs it without the GIL, so the next
response downloads and parses meanwhile.

Exactness: each column's SQL converts only the forms it recognises exactly (canonical integers,
``t``/``true``/``f``/``false``, JSON-grammar floats, UTC timestamps, flat text arrays) and hands any
other text to ``_replica_convert(spec, text)``, which is ``replica.values``' own converter (the
store registers it with ``convert_by_spec``). A bad value makes that function raise, the statement
fails, and the store falls back to the Python path, which names the value. So both paths store
the same values; tests/property/test_sqlconvert.py checks it.

Pure (no apsw): the store runs the SQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache

from replica.typemap.schema import Column, SQLValue, TableSchema
from replica.typemap.values import BOOL_TYPES, FLOAT_TYPES, INT_TYPES, JSON_TYPES

__all__ = [
    "CONVERT_FUNCTION",
    "any_miss_sql",
    "attached_name",
    "attached_select",
    "bulk_select_sql",
    "column_sql",
    "convert_by_spec",
    "deferrable",
    "misses_sql",
    "real_column",
    "resolve_sql",
]

CONVERT_FUNCTION = "_replica_convert"

_D = "[0-9]"
_UTC_SECONDS = f"{_D * 4}-{_D * 2}-{_D * 2}[ T]{_D * 2}:{_D * 2}:{_D * 2}"
# Flat array text: printable ASCII without space, quote, backslash or braces (the delimiter is ",").
_ARRAY_UNSAFE = "*[^]!#-[^-z|~,]*"
# Element converters that are the identity (text-like element types).
_NOT_TEXT_ELEMENTS = INT_TYPES | FLOAT_TYPES | BOOL_TYPES | JSON_TYPES | {"bytea", "timestamptz", "timetz", "box"}


def _spec(column: Column) -> str:
    return json.dumps([column.type, column.dims, column.override], separators=(",", ":"))


@lru_cache(maxsize=256)
def _converter(spec: str):  # type: ignore[no-untyped-def]
    pg_type, dims, override = json.loads(spec)
    return Column("", pg_type, dims, override=override).converter()


def convert_by_spec(spec: str, text: str | None) -> SQLValue:
    """The SQL function behind the unusual forms: the Python converter for a column spec."""
    if text is None:
        return None
    convert: Callable[[str], SQLValue] = _converter(spec)
    return convert(text)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def deferrable(column: Column) -> bool:
    """Whether ``column_sql(column, x, defer=True)`` leaves the forms it does not know as BLOB misses.

    Every converter's value is an INTEGER, REAL or TEXT, so a BLOB can only be a miss, except for a
    bytea column, whose SQL matches every valid form itself (only bad values call Python).
    """
    scalar_bytea = column.type == "bytea" and not column.dims
    return column.override != "text" and not scalar_bytea and column.converter() is not str


# A timestamptz another zone printed: years from 1000 (shifting cannot leave 4 digits; past 9999 SQLite's
# datetime() is NULL and Python decides), a space, +HH or +HH:MM.
_ZONED = f"[1-9]{_D * 3}-{_D * 2}-{_D * 2} {_D * 2}:{_D * 2}:{_D * 2}"


def _offset_match(x: str) -> str:
    body = f"substr({x}, 1, length({x}) - CASE WHEN {x} GLOB '*:{_D * 2}' THEN 6 ELSE 3 END)"
    return (
        f"({x} GLOB '{_ZONED}*[+-]{_D * 2}' OR {x} GLOB '{_ZONED}*[+-]{_D * 2}:{_D * 2}') "
        f"AND (length({body}) = 19 OR (length({body}) BETWEEN 21 AND 26 AND substr({body}, 20, 1) = '.' "
        f"AND substr({body}, 21) NOT GLOB '*[^0-9]*')) "
        # SQLite's date functions roll Feb 30 or 24:00 over where Python refuses them: only real dates.
        f"AND date(substr({x}, 1, 10)) = substr({x}, 1, 10) AND time(substr({x}, 12, 8)) = substr({x}, 12, 8)"
    )


def _shifted(x: str) -> str:
    """UTC text of ``x`` (matched by ``_offset_match``): SQLite shifts the whole seconds, the fraction
    is kept as sent. NULL where SQLite refuses the offset (hours over 14, minutes over 59): Python decides."""
    colon = f"{x} GLOB '*:{_D * 2}'"
    offset = f"CASE WHEN {colon} THEN substr({x}, -6) ELSE substr({x}, -3) || ':00' END"
    fraction = f"substr({x}, 20, length({x}) - 19 - CASE WHEN {colon} THEN 6 ELSE 3 END)"
    return f"datetime(substr({x}, 1, 19) || {offset}) || {fraction} || '+00:00'"


def real_column(column: Column) -> bool:
    """Whether the column's values are REALs (so possibly infinite)."""
    return column.override == "real" or (column.override is None and column.type in FLOAT_TYPES and not column.dims)


def column_sql(column: Column, x: str, defer: bool = False) -> str:
    """SQL converting the text expression ``x`` (NULL stays NULL) exactly as ``column.converter()``.

    ``defer``: a form the SQL does not convert itself is kept as ``CAST(x AS BLOB)`` (a miss) instead
    of calling the Python converter per value, for ``resolve_sql`` to fill in later in one batch
    (only where ``deferrable``): a per-value call from SQL waits for the GIL each time.
    """
    fallback = f"{CONVERT_FUNCTION}({_literal(_spec(column))}, {x})"
    if defer and deferrable(column):
        fallback = f"CAST({x} AS BLOB)"
    if column.override == "text":
        return x
    if real_column(column):
        # JSON's number grammar is a subset of Postgres float output that CAST reads exactly as float() does.
        fast = f"{x} NOT GLOB '*[^0-9eE.+-]*' AND json_valid({x})"
        return f"CASE WHEN {x} IS NULL THEN NULL WHEN {fast} THEN CAST({x} AS REAL) ELSE {fallback} END"
    if column.dims:
        inner = f"substr({x}, 2, length({x}) - 2)"
        if column.type in INT_TYPES:
            # A flat array of canonical integers is its JSON already, once NULL is null: JSON's grammar
            # refuses leading zeros, signs other than "-" and empty elements; at most 18 digits is in range.
            listed = f"'[' || replace({inner}, 'NULL', 'null') || ']'"
            ints = (
                f"{x} GLOB '{{?*}}' AND {inner} NOT GLOB '*[^0-9,NUL-]*' AND {inner} NOT GLOB '*{_D * 19}*' "
                f"AND ',' || {inner} || ',' NOT GLOB '*,-0,*' AND json_valid({listed})"
            )
            return (
                f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = '{{}}' THEN '[]' WHEN {ints} THEN {listed} "
                f"ELSE {fallback} END"
            )
        if column.type in _NOT_TEXT_ELEMENTS:
            return f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = '{{}}' THEN '[]' ELSE {fallback} END"
        flat = (
            f"{x} GLOB '{{?*}}' AND {inner} NOT GLOB '{_ARRAY_UNSAFE}' AND {inner} NOT GLOB ',*' "
            f"AND {inner} NOT GLOB '*,' AND {inner} NOT GLOB '*,,*' AND instr(upper({x}), 'NULL') = 0"
        )
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = '{{}}' THEN '[]' "
            f"WHEN {flat} THEN '[\"' || replace({inner}, ',', '\",\"') || '\"]' ELSE {fallback} END"
        )
    if column.type in INT_TYPES:
        # Canonical text round-trips; anything else (signs, zeros, out of range) goes the careful way.
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN CAST(CAST({x} AS INTEGER) AS TEXT) = {x} "
            f"THEN CAST({x} AS INTEGER) ELSE {fallback} END"
        )
    if column.type in BOOL_TYPES:
        return f"CASE {x} WHEN 'true' THEN 1 WHEN 't' THEN 1 WHEN 'false' THEN 0 WHEN 'f' THEN 0 ELSE {fallback} END"
    if column.type == "timestamptz":
        fraction = f"substr({x}, 21, length({x}) - 23)"
        # Microseconds first: Postgres' usual form, matched by one anchored GLOB (its classes are
        # most of the cost: this form took ~1.9k instructions per value instead of ~3.4k).
        return (
            f"CASE WHEN {x} IS NULL THEN NULL "
            f"WHEN {x} GLOB '{_UTC_SECONDS}.{_D * 6}+00' THEN substr({x}, 1, 26) || '+00:00' "
            f"WHEN length({x}) = 22 AND {x} GLOB '{_UTC_SECONDS}+00' THEN substr({x}, 1, 19) || '+00:00' "
            f"WHEN length({x}) BETWEEN 24 AND 29 AND {x} GLOB '{_UTC_SECONDS}.?*+00' "
            f"AND {fraction} NOT GLOB '*[^0-9]*' THEN substr({x}, 1, length({x}) - 3) || '+00:00' "
            f"WHEN {_offset_match(x)} THEN coalesce({_shifted(x)}, {fallback}) "
            f"ELSE {fallback} END"
        )
    if column.converter() is str:
        return x
    if column.type == "bytea":
        # \x and pairs of hex digits is every form bytea's converter accepts; only bad text goes to Python.
        hexed = f"substr({x}, 3)"
        return (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN substr({x}, 1, 2) = '\\x' AND length({hexed}) % 2 = 0 "
            f"AND {hexed} NOT GLOB '*[^0-9a-fA-F]*' THEN unhex({hexed}) ELSE {fallback} END"
        )
    return f"CASE WHEN {x} IS NULL THEN NULL ELSE {fallback} END"


def bulk_select_sql(schema: TableSchema, key: str = "", defer: bool = False) -> str | None:
    """SELECT (``key`` c0, c1, …) for each change message of the body bound as ``?1``, in log order.

    ``key`` starts the select list: it may name ``s.k``, the message key (unescaping ~30 bytes
    per row costs ~20 % of the work, so it is only extracted when named). None if a column name
    cannot be written as a quoted JSON path label (one with a double quote, backslash or control
    character), or the table has no primary key (its rows are identified by every column, and
    Electric's key map folds identical ones): such tables take the Python path. Ends in a WHERE
    clause: PK columns not NULL, which also drops control messages.
    """
    if not schema.keyed or any(ch in '"\\' or ch < " " for name in schema.names for ch in name):
        return None
    paths = [_literal('$."' + name + '"') for name in schema.names]
    extract = ", ".join(f"m.v ->> {path} AS c{i}" for i, path in enumerate(paths))
    each = "jsonb_extract(m.value, '$.value') AS v"  # each row's values, looked up once rather than per column
    if "s.k" in key:
        extract, each = "m.k, " + extract, "m.value ->> '$.key' AS k, " + each
    converted = ", ".join(column_sql(column, f"s.c{i}", defer) for i, column in enumerate(schema.columns))
    present = " AND ".join(f"s.c{schema.names.index(c)} IS NOT NULL" for c in schema.pk)
    # A control message has no values, so its NULL key columns leave it out.
    # LIMIT -1 keeps each subquery from being flattened, so each value is extracted once.
    return (
        f"SELECT {key}{converted} FROM (SELECT {extract} FROM (SELECT {each} FROM jsonb_each(?1) AS m "
        f"LIMIT -1) AS m LIMIT -1) AS s WHERE {present}"
    )


def misses_sql(column: int, table: str = "rows") -> str:
    """One JSON text listing the misses of column ``column`` in ``table``: [[rowid, text], …]
    (one statement, so reading them takes the GIL once)."""
    pairs = f"json_group_array(json_array(rowid, CAST(c{column} AS TEXT)))"
    return f"SELECT {pairs} FROM {table} WHERE typeof(c{column}) = 'blob'"


def any_miss_sql(columns: list[int], table: str = "rows") -> str:
    """Whether any of ``columns`` of ``table`` holds a miss: one scan, where a scan per column found none."""
    misses = " OR ".join(f"typeof(c{i}) = 'blob'" for i in columns)
    return f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {misses})"


def resolve_sql(column: int, real: bool, table: str = "rows") -> str:
    """UPDATE filling column ``column`` of ``table`` from ``?1``, a JSON text [[rowid, value], …]
    of converted misses. ``real``: the column's values may be infinite, sent as "Infinity"/"-Infinity"."""
    value = "r.value ->> 1"
    if real:
        value = f"CASE {value} WHEN 'Infinity' THEN 9e999 WHEN '-Infinity' THEN -9e999 ELSE {value} END"
    return f"UPDATE {table} AS t SET c{column} = {value} FROM json_each(?1) AS r WHERE t.rowid = r.value ->> 0"


def attached_name(part: int) -> str:
    """The schema name under which the store attaches part ``part`` of rows converted ahead (replica.fast)."""
    return f"replica_scratch{part}"


def attached_select(width: int, key: str, schema_name: str, table: str = "rows") -> str:
    """``bulk_select_sql``'s result for rows already converted into ``schema_name.table`` (the attached
    database of a part converted ahead, or the writer's own temporary table: ``replica.fast``), in log order."""
    columns = ", ".join(f"s.c{i}" for i in range(width))
    return f"SELECT {key}{columns} FROM {schema_name}.{table} AS s WHERE true ORDER BY s.rowid"
